"""Proxy overhead benchmark: direct-to-upstream vs through keyplane, in one run.

    .venv/bin/python bench/proxy_bench.py [--servers uvicorn,granian] [--duration 8] [--update-docs]

Starts the project's fake upstream (fixed answer, raw asyncio + httptools), a keyplane process on
SQLite with an initialized org (authentication, permissions, last_used and a settle hook that records
every request's usage all on), and a load generator (wrk; an asyncio/aiohttp one if wrk is missing).
Prints p50/p99 latency at 1 connection, requests/s at 32 connections, and keyplane's peak RSS, for
the upstream alone and through keyplane under each ASGI server. ``--update-docs`` writes the figures
into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"

WRK_LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("WRKJSON {\\"p50\\": %%d, \\"p99\\": %%d, \\"requests\\": %%d, \\"duration\\": %%d, " ..
    "\\"errors\\": %%d, \\"non2xx\\": %%d}\\n", latency:percentile(50), latency:percentile(99), summary.requests,
    summary.duration, errs, summary.errors.status))
end
"""


# --- the keyplane process (``serve`` sub-command, run in a child process) ------------------------


def make_app() -> Any:
    """keyplane as `keyplane serve` builds it (with whatever features are installed: limits, billing,
    metering); a settle hook stands in for usage recording when no feature installed one.

    BENCH_CORE=1 leaves the features out (keyplane.app.FEATURES), to measure the data plane alone.
    """
    import keyplane.app
    from keyplane.app import create_app
    from keyplane.config import load_settings

    if os.environ.get("BENCH_CORE") == "1" and hasattr(keyplane.app, "FEATURES"):
        keyplane.app.FEATURES = ()

    app = create_app(load_settings())
    journal: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=100_000)
    startup = app.startup

    async def settle(ctx: Any) -> None:
        journal.append(
            (
                ctx.request_id,
                ctx.key.id,
                ctx.project_id,
                ctx.model,
                ctx.upstream,
                ctx.status,
                ctx.prompt_tokens,
                ctx.cached_tokens,
                ctx.completion_tokens,
                ctx.latency_ms,
            )
        )

    async def started() -> None:
        await startup()
        assert app.runtime is not None
        # The metering feature records usage when it is installed; otherwise stand in for it.
        # (a pipeline tap: settled requests reach it after every feature's steps, keyplane.pipeline)
        if app.runtime.pipeline.usage is None:
            app.runtime.pipeline.taps.append(settle)

    app.startup = started  # type: ignore[method-assign]
    return app


def serve(server: str, port: int) -> None:
    if server == "granian":
        from granian import Granian

        sys.path.insert(0, str(Path(__file__).parent))
        Granian(
            "proxy_bench:make_app",
            factory=True,
            address="127.0.0.1",
            port=port,
            interface="asgi",
            workers=1,
            loop="uvloop",
            log_enabled=False,
            backlog=2048,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            make_app(),
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="error",
            access_log=False,
            server_header=False,
            date_header=False,
            backlog=2048,
            lifespan="on",
        )


# --- orchestration -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def init_home(home: Path, upstream_port: int) -> str:
    """An initialized org on SQLite and a keyplane.toml routing gpt-* to the fake; the project key."""
    from keyplane import control
    from keyplane.config import load_settings
    from keyplane.store import db

    home.mkdir(parents=True, exist_ok=True)
    # What is measured: authentication, permissions, usage recording (metering's settle step, or the
    # stand-in below). Rate limits, the kill switch and credit enforcement are turned off: a benchmark
    # key sending thousands of requests a second would (rightly) be throttled or suspended.
    (home / "keyplane.toml").write_text(
        f'[[upstreams]]\nname = "fake"\nbase_url = "http://127.0.0.1:{upstream_port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\n\n'
        "[limits]\nenabled = false\n\n[guard]\nenabled = false\n\n[credit]\nenforce = false\n"
    )
    settings = load_settings(env={"KEYPLANE_HOME": str(home)}, create_secret=True)

    async def run() -> dict[str, Any]:
        engine = db.make_engine(settings.database_url)
        await db.migrate(engine)
        async with db.sessionmaker(engine)() as s, s.begin():
            out = await control.init_org(s, settings.secret_key, "Bench org", "bench@example.com")
        await engine.dispose()
        return out

    return str(asyncio.run(run())["api_key"])


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its children (granian serves from a worker process)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def run_wrk(url: str, key: str, connections: int, duration: float, threads: int = 1) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % (BODY, key))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "-s", script, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    d = json.loads(line[len("WRKJSON ") :])
    return {
        "p50_ms": d["p50"] / 1000,
        "p99_ms": d["p99"] / 1000,
        "rps": d["requests"] / (d["duration"] / 1e6),
        "errors": d["errors"] + d["non2xx"],
        "requests": d["requests"],
    }


def run_aiohttp(url: str, key: str, connections: int, duration: float) -> dict[str, float]:
    """Fallback load generator (slower than wrk: it competes for the same CPU)."""
    import aiohttp

    async def main() -> dict[str, float]:
        lat: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    async with s.post(url, data=BODY, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - t0
        lat.sort()
        return {
            "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "rps": len(lat) / elapsed,
            "errors": errors,
            "requests": len(lat),
        }

    return asyncio.run(main())


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of the process and its children (granian serves from a worker)."""
    if pid is None:
        return 0.0
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def measure(url: str, key: str, duration: float, load: str, pid: int | None = None) -> dict[str, float]:
    run = run_wrk if load == "wrk" else run_aiohttp
    run(url, key, 8, min(2.0, duration))  # warm-up: pools, caches, the JIT-less interpreter's own caches
    one = run(url, key, 1, duration)
    cpu0 = cpu_seconds(pid)
    many = run(url, key, 32, duration)
    cpu = cpu_seconds(pid) - cpu0
    # CPU time per request does not depend on what else runs on the machine: 1e6 / it is the
    # requests/s one dedicated core would sustain.
    us = cpu * 1e6 / many["requests"] if pid is not None and many["requests"] else 0.0
    return {
        "p50_ms": one["p50_ms"],
        "p99_ms": one["p99_ms"],
        "rps_1": one["rps"],
        "rps_32": many["rps"],
        "p50_32_ms": many["p50_ms"],
        "p99_32_ms": many["p99_ms"],
        "errors": one["errors"] + many["errors"],
        "cpu_us_per_req": us,
        "rps_per_core": 1e6 / us if us else 0.0,
    }


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def bench(runs: list[tuple[str, str]], duration: float, load: str) -> dict[str, Any]:
    env = {**os.environ, UPSTREAM_KEY_ENV: "sk-bench-upstream", "PYTHONPATH": str(ROOT / "src")}
    up_port = free_port()
    fake = spawn(["-m", "keyplane.testing.fake_upstream", "--port", str(up_port), "--fixed", "--no-record"], env)
    results: dict[str, Any] = {"machine": machine(), "load": load, "duration_s": duration, "rows": {}}
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        results["rows"]["direct"] = measure(direct, "sk-bench-upstream", duration, load)
        print(f"direct: {results['rows']['direct']}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            key = init_home(home, up_port)
            for mode, server in runs:
                port = free_port()
                kp = spawn(
                    [__file__, "serve", "--server", server, "--port", str(port)],
                    {
                        **env,
                        "KEYPLANE_HOME": str(home),
                        "KEYPLANE_LOG_LEVEL": "warning",
                        "BENCH_CORE": "1" if mode == "core" else "0",
                    },
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/healthz")
                    row = measure(f"http://127.0.0.1:{port}/v1/chat/completions", key, duration, load, kp.pid)
                    row["peak_rss_mb"] = peak_rss_mb(kp.pid)
                    results["rows"][f"{mode}, {server}"] = row
                    print(f"{mode}, {server}: {row}", flush=True)
                finally:
                    stop(kp)
    finally:
        stop(fake)
    return results


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_before": os.getloadavg()[0],
    }


def table(r: dict[str, Any]) -> str:
    d = r["rows"]["direct"]
    lines = [
        "| target | p50 @1 conn | p99 @1 conn | added p50 | req/s @32 conn | vs direct | CPU per request "
        "| req/s per core | peak RSS | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| upstream direct | {d['p50_ms']:.3f} ms | {d['p99_ms']:.3f} ms | - | {d['rps_32']:,.0f} | 1.00 "
        f"| - | - | - | {d['errors']:.0f} |",
    ]
    for name, row in r["rows"].items():
        if name == "direct":
            continue
        lines.append(
            f"| keyplane ({name}) | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms | "
            f"{row['p50_ms'] - d['p50_ms']:.3f} ms ({row['p50_ms'] / d['p50_ms']:.1f}x) | {row['rps_32']:,.0f} | "
            f"{row['rps_32'] / d['rps_32']:.2f} | {row['cpu_us_per_req']:.0f} us | {row['rps_per_core']:,.0f} | "
            f"{row['peak_rss_mb']:.0f} MB | {row['errors']:.0f} |"
        )
    m = r["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, {m['system']}; load generator: "
        f"{r['load']}, {r['duration_s']:g} s per measurement, after a warm-up; measured "
        f"{time.strftime('%Y-%m-%d %H:%M')}; 1-minute load average when the run started: "
        f"{m['load_before']:.2f} (other processes on the machine skew the figures; above ~0.5, rerun)."
    )
    return "\n".join(lines)


def update_docs(text: str) -> None:
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    doc = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1]
    DOCS.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description="keyplane proxy overhead benchmark")
    sub = ap.add_subparsers(dest="cmd")
    sv = sub.add_parser("serve", help="(internal) run keyplane for the benchmark")
    sv.add_argument("--server", default="uvicorn")
    sv.add_argument("--port", type=int, required=True)
    ap.add_argument("--servers", default="uvicorn,granian", help="ASGI servers to compare (data plane alone)")
    ap.add_argument(
        "--no-full",
        action="store_true",
        help="skip the run with every installed feature (limits, billing, metering) on uvicorn",
    )
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--load", choices=["auto", "wrk", "aiohttp"], default="auto")
    ap.add_argument("--update-docs", action="store_true", help="write the figures into docs/benchmarks.md")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.server, args.port)
        return
    load = args.load if args.load != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    runs = []
    for s in args.servers.split(","):
        if s == "granian" and not _has("granian"):
            print("granian is not installed; measuring uvicorn only (pip install granian to compare)")
            continue
        runs.append(("core", s))
    if not args.no_full:
        runs.append(("full", "uvicorn"))
    r = bench(runs, args.duration, load)
    text = table(r)
    print()
    print(text)
    if args.json:
        print(json.dumps(r))
    if args.update_docs:
        update_docs(text)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
