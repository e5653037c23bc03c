"""N instances enforce the same limits as one: three real keyplane processes sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.billing.conftest import REDIS_URL, UPSTREAM_KEY_ENV, clean_redis, config, unique_prefix
from tests.support import init_org, make_settings, postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class Instance:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "keyplane.cli:app_from_env",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "info",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port: int | None = None
        self.log: list[str] = []
        self._found = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._found.set()

    def wait_ready(self, seconds: float = 60) -> str:
        deadline = time.monotonic() + seconds
        assert self._found.wait(seconds), "".join(self.log)
        url = f"http://127.0.0.1:{self.port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("instance not ready:\n" + "".join(self.log))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def fleet(tmp_path: Path, fake_session) -> Iterator[tuple[list[str], dict]]:
    prefix = unique_prefix()
    secret = secrets.token_urlsafe(32)
    fake_session.reset()
    with postgres_database() as db_url:
        settings = make_settings(
            tmp_path / "init", db_url, config_text=config(fake_session), KEYPLANE_SECRET_KEY=secret
        )
        init = init_org(settings)
        instances = []
        try:
            for i in range(3):
                home = tmp_path / f"home{i}"
                home.mkdir()
                (home / "keyplane.toml").write_text(config(fake_session))
                env = {
                    **os.environ,
                    "KEYPLANE_HOME": str(home),
                    "KEYPLANE_DATABASE_URL": db_url,
                    "KEYPLANE_REDIS_URL": REDIS_URL,
                    "KEYPLANE_REDIS_PREFIX": prefix,
                    "KEYPLANE_SECRET_KEY": secret,
                    "KEYPLANE_SNAPSHOT_POLL_SECONDS": "0.2",
                    UPSTREAM_KEY_ENV: os.environ[UPSTREAM_KEY_ENV],
                }
                env.pop("KEYPLANE_CONFIG", None)
                instances.append(Instance(env))
            urls = [inst.wait_ready() for inst in instances]
            yield urls, init
        finally:
            for inst in instances:
                inst.stop()
            clean_redis(prefix)


def _wait_all(urls: list[str], admin_key: str, path: str, check) -> None:
    deadline = time.monotonic() + 15
    for url in urls:
        while True:
            r = httpx.get(url + "/v1/organization" + path, headers={"Authorization": f"Bearer {admin_key}"})
            if r.status_code == 200 and check(r.json()):
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)


def _wait_key(url: str, key: str) -> None:
    deadline = time.monotonic() + 15
    while (r := httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})).status_code == 401:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)  # poll interval (a deadline loop)


async def _burst(urls: list[str], key: str, n: int, model: str) -> tuple[collections.Counter, float]:
    """``n`` requests at once, spread over the instances. The connections are opened first and the
    requests then written in one go on raw sockets, so that every admission happens well within the
    second in which a 60-per-minute limit would let one more through (the test measures it)."""
    body = orjson.dumps({**CHAT, "model": model})
    conns = []
    for i in range(n):
        host, port = urls[i % len(urls)].rsplit("/", 1)[-1].split(":")
        conns.append(await asyncio.open_connection(host, int(port)))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    for _, w in conns:
        w.write(head + body)
    await asyncio.gather(*[w.drain() for _, w in conns])
    sent = time.monotonic() - t0

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> str:
        raw = await r.read()
        w.close()
        status = int(raw.split(b" ", 2)[1])
        payload = raw.split(b"\r\n\r\n", 1)[1]
        if b"transfer-encoding: chunked" in raw.split(b"\r\n\r\n", 1)[0].lower():
            payload = payload.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        return "ok" if status == 200 else orjson.loads(payload)["error"]["code"]

    out = collections.Counter(await asyncio.gather(*[answer(r, w) for r, w in conns]))
    window = time.monotonic() - t0
    print(f"burst of {n}: written in {sent * 1000:.0f} ms, answered in {window:.2f} s: {dict(out)}")
    return out, window


def test_three_instances_enforce_one_rpm_and_one_budget(fleet, fake_session):
    urls, init = fleet
    admin, key, pid = init["admin_key"], init["api_key"], init["project_id"]
    h = {"Authorization": f"Bearer {admin}"}
    # warm up code paths and Redis connection pools, on a project of its own
    other = httpx.post(urls[0] + "/v1/organization/projects", json={"name": "warm-up"}, headers=h).json()["id"]
    warm_key = httpx.post(
        urls[0] + f"/v1/organization/projects/{other}/api_keys", json={"name": "w"}, headers=h
    ).json()["value"]
    for url in urls:  # the new key reaches every instance's snapshot
        _wait_key(url, warm_key)
    asyncio.run(_burst(urls, warm_key, 300, "demo-echo"))
    r = httpx.post(
        urls[0] + f"/v1/organization/projects/{pid}/rate_limits/rl-demo-echo",
        json={"max_requests_per_1_minute": 60},
        headers=h,
    )
    assert r.status_code == 200
    _wait_all(
        urls,
        admin,
        f"/projects/{pid}/rate_limits?limit=1000",
        lambda d: any(x["id"] == "rl-demo-echo" and x["max_requests_per_1_minute"] == 60 for x in d["data"]),
    )
    counts, window = asyncio.run(_burst(urls, key, 300, "demo-echo"))
    # GCRA lets one more request through every second after the burst (60 per minute, continuously):
    # exactly 60 when every admission happened within a second, as they do on an idle machine.
    extra = counts["ok"] - 60
    assert counts["ok"] + counts["rate_limit_exceeded"] == 300
    assert 0 <= extra <= int(window), (counts, window)
    # one budget across the fleet: 0.8 cents a request, 40 cents of limit
    r = httpx.post(
        urls[1] + f"/v1/organization/projects/{pid}/spend_limit",
        json={"threshold_amount": 40, "currency": "USD", "interval": "month"},
        headers=h,
    )
    assert r.status_code == 200
    # every instance enforces it once a request it could never afford is refused there; until then the
    # probe is admitted, fails upstream and costs nothing (failed attempts are not billed)
    deadline = time.monotonic() + 15
    probe = {"Authorization": f"Bearer {key}", "x-fake-status": "500"}
    for url in urls:
        while True:
            r = httpx.post(
                url + "/v1/chat/completions",
                headers=probe,
                json={**CHAT, "model": "gpt-4o-mini", "max_tokens": 100_000},
            )
            if r.status_code == 429 and r.json()["error"]["code"] == "project_spend_limit_exceeded":
                break
            assert r.status_code == 500 and time.monotonic() < deadline, r.text
            time.sleep(0.05)
    fake_session.reset()
    counts, _ = asyncio.run(_burst(urls, key, 200, "gpt-4o-mini"))
    assert counts == {"ok": 50, "project_spend_limit_exceeded": 150}
    assert len(fake_session.model_requests()) == 50
    got = httpx.get(urls[2] + f"/v1/organization/projects/{pid}/spend_limit", headers=h).json()
    assert got["spent"] == 40
