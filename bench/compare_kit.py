"""Helpers of bench/compare.py and bench/revocation.py: child processes, HTTP calls, /proc and loop files, a fleet's
store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")


@contextlib.contextmanager
def fleet_store() -> Iterator[dict[str, str]]:
    """A PostgreSQL database and a Redis key prefix of the run's own: the KEYPLANE_* settings that use them. Both
    are removed afterwards."""
    import asyncpg
    import redis

    name = f"kp_bench_{os.getpid()}_{int(time.time())}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield {
            "KEYPLANE_DATABASE_URL": PG.rsplit("/", 1)[0] + "/" + name,
            "KEYPLANE_REDIS_URL": REDIS,
            "KEYPLANE_REDIS_PREFIX": name,
        }
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        r = redis.Redis.from_url(REDIS)
        try:
            for key in r.scan_iter(f"*{name}*", count=1000):  # "{prefix}:..." (the limiter's hash tag) and "prefix:..."
                r.delete(key)
        finally:
            r.close()


class Processes:
    """The children of the run, each in its own process group, stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], log: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.folder / log).open("wb")
        p = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)


# --- HTTP helpers --------------------------------------------------------------------------------


def call(url: str, key: str = "", body: Any = None, method: str | None = None) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method or ("POST" if data else "GET"),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


def wait_up(url: str, p: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({p.returncode}); see its log")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer: the server is up
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


def rss_mb(pid: int | None) -> float:
    with contextlib.suppress(OSError, StopIteration):
        line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    return float("nan")


def longest_stall(loop_file: Path | None, start: float, end: float) -> float | None:
    """The largest per-second lateness bench/loopmon.py wrote between two unix times, in ms."""
    if loop_file is None or not loop_file.exists():
        return None
    worst = [
        float(ms)
        for ts, ms in (ln.split() for ln in loop_file.read_text().splitlines() if ln.strip())
        if start - 1 <= float(ts) <= end
    ]
    return max(worst, default=None)


def keyplane_home(
    ps: Processes, name: str, upstream: str, upstream_key_env: str, settings: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """A fresh KEYPLANE_HOME with `keyplane init` done: (the environment to run keyplane in, init's JSON).
    Its keyplane.toml names only the upstream; every other setting is keyplane's default, but for ``settings``
    (KEYPLANE_* variables: a fleet's KEYPLANE_DATABASE_URL and KEYPLANE_REDIS_URL)."""
    home = ps.folder / name
    home.mkdir()
    (home / "keyplane.toml").write_text(
        f'[[upstreams]]\nname = "nginx"\nbase_url = "{upstream}/v1"\napi_key_env = "{upstream_key_env}"\n'
        'models = ["gpt-4o-mini"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env["KEYPLANE_HOME"] = str(home)
    env.update(settings or {})
    init = subprocess.run(
        [str(Path(sys.executable).parent / "keyplane"), "init", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return env, json.loads(init.stdout)
