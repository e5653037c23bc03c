"""End to end through the real proxy: a replayed leak in a fleet of two processes, and a stream cut."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from keyplane import alerts
from keyplane.clock import FakeClock
from tests.guard.support import Receiver
from tests.support import postgres_database

REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT = "Summarise the quarterly report on the new warehouse in three short sentences, please."

LEAK_CONFIG = """
[[upstreams]]
name = "demo"
base_url = "demo"
models = ["demo-*"]

[guard]
defaults = false

[[guard.rules]]
name = "token-surge"
kind = "token_surge"
scope = "key"
window = "1h"
threshold = 3.0
metric = "tokens"
min_volume = 1000
mode = "revoke"
cooldown = "1h"

[[alerts.sinks]]
type = "webhook"
url = "{url}/hook"
secret_env = "KP_TEST_HOOK_SECRET"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chat(base: str, key: str) -> httpx.Response:
    return httpx.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "demo-echo", "messages": [{"role": "user", "content": PROMPT}]},
        timeout=10,
    )


@pytest.fixture
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_replayed_leak_is_revoked_across_the_fleet(pg_url, monkeypatch, gateways):
    hook = Receiver().start()
    monkeypatch.setenv("KP_TEST_HOOK_SECRET", "fleet-secret")
    clock = FakeClock()
    # instance A: in this process, on the test's clock
    a = gateways.start(LEAK_CONFIG.format(url=hook.url), clock, store=pg_url, KEYPLANE_REDIS_URL=REDIS_URL)
    init = a.init
    port = _free_port()
    env = {
        **os.environ,
        "KEYPLANE_HOME": str(a.settings.home),
        "KEYPLANE_DATABASE_URL": pg_url,
        "KEYPLANE_REDIS_URL": REDIS_URL,
        "KEYPLANE_PORT": str(port),
        "KEYPLANE_LOG_LEVEL": "warning",
    }
    env.pop("KEYPLANE_SNAPSHOT_POLL_SECONDS", None)  # B runs on the shipped defaults
    b = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "keyplane.cli:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    b_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness by polling, never sleep-and-hope
            assert b.poll() is None, b.stdout.read().decode() if b.stdout else ""
            try:
                if httpx.get(b_url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "instance B did not become ready"
            time.sleep(0.05)
        key = a.api_key
        guard = a.app.runtime.features.guard
        assert chat(b_url, key).status_code == 200  # the key works on B

        # A steady day and more: six requests an hour.
        for _ in range(26 * 6):
            r = chat(a.base_url, key)
            assert r.status_code == 200, r.text
            clock.advance(600)
        a.call(guard.drain())
        assert hook.received == []

        # The leak: one request a minute (10x) until the kill switch acts; it must within the hour.
        started = clock.now()
        while True:
            r = chat(a.base_url, key)
            if r.status_code == 401:
                break
            assert r.status_code == 200
            clock.advance(60)
            a.call(guard.drain())
            entry = a.app.runtime.snapshot.keys_by_id[init["api_key_id"]]
            if entry.revoked_at is not None:
                break
            assert clock.now() - started < 3600, "not revoked within the hour"
        revoked_at = time.monotonic()

        # The next request with the key, on the other process, is refused within a second.
        while True:
            r = chat(b_url, key)
            if r.status_code == 401:
                break
            assert r.status_code == 200
            assert time.monotonic() - revoked_at < 1.0, "instance B still served the key after 1 s"
            time.sleep(0.01)
        assert time.monotonic() - revoked_at < 1.0
        msg = r.json()["error"]["message"]
        assert "disabled by the keyplane kill switch: rule token-surge (tokens " in msg

        (got,) = hook.wait_for(1)
        assert alerts.verify(b"fleet-secret", got.body, got.headers["keyplane-signature"])
        body = got.json()
        assert body["action"] == "revoked" and body["key"]["id"] == init["api_key_id"]
        assert body["rule"]["name"] == "token-surge" and body["figures"]["ratio"] >= 4
        a.call(guard.drain())
        assert len(hook.received) == 1
    finally:
        b.terminate()
        b.wait(30)
        gateways.stop(a)
        hook.stop()


STREAM_CONFIG = """
[[upstreams]]
name = "fake"
base_url = "{base}"
models = ["gpt-*"]

[guard]
defaults = false
"""


def test_a_revoked_key_stream_is_cut(gateways, fake):
    srv = gateways.start(STREAM_CONFIG.format(base=fake.base_url))
    text = " ".join(f"word{i}" for i in range(200))
    headers = {"Authorization": f"Bearer {srv.api_key}", "x-fake-chunk-delay-ms": "20", "x-fake-text": text}
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    events: list[bytes] = []
    with httpx.stream("POST", srv.v1 + "/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(line.encode())
                break
        sa = srv.init["api_key_id"]
        rv = httpx.post(
            srv.v1 + f"/organization/api_keys/{sa}/revoke",
            json={"reason": "test"},
            headers={"Authorization": f"Bearer {srv.admin_key}"},
        )
        assert rv.status_code == 200
        events.extend(line.encode() for line in lines if line.startswith("data:"))
    assert len(events) < 150, "the stream ran to its end"
    last = events[-1]
    assert b'"error"' in last and b"has been revoked (test)" in last
    assert b"[DONE]" not in b"".join(events)
