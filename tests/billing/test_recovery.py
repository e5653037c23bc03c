"""Money across faults (issue 15): the budget the limiter enforces always matches the money spent.

- kill -9 right after spending (single node): the restart counts the journal's unapplied records, so
  the hard limit is not sold again, and the SQL ledger is rebuilt from the journal to the micro-dollar;
- Redis restarted empty (a real second redis-server of the test's own): the counters are rebuilt from
  SQL and the journal before anything is admitted, and rate buckets do not come back full;
- Redis cut during settles (a TCP proxy the test cuts): the settles are replayed when Redis is back;
- admissions that time out against a blackholed Redis do not hold budget afterwards.

Every request with max_tokens=5 costs exactly COST (8000 µ$); the limit of $0.40 is 50 requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from keyplane.billing.models import SpendLedger
from keyplane.config import database_url_for
from keyplane.store import db
from keyplane.testing import FakeUpstream
from keyplane.usage.models import UsageRequest
from tests.billing.conftest import COST, admin_http, billing_of, config
from tests.billing.test_enforcement import _fire
from tests.support import Gateways, RunningServer
from tests.usage.support import Proc, free_port

pytestmark = pytest.mark.slow

LIMIT = {"currency": "USD", "interval": "month", "threshold_amount": 40}  # 50 requests


# --- helpers -----------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own (no persistence): kill it, start it again empty."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.p: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.p = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.p is not None:
            self.p.kill()
            self.p.wait()
            self.p = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path)
    r.start()
    yield r
    r.kill()


class Proxy:
    """A TCP proxy to Redis the test controls: ``cut`` closes every connection and refuses new ones,
    ``blackhole`` accepts and forwards nothing, ``restore`` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.mode = "open"
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        import threading

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            w.close()
            return
        self.writers.add(w)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self.writers.add(uw)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    while self.mode == "blackhole":
                        await asyncio.sleep(0.01)
                    if self.mode == "cut":
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def set(self, mode: str) -> None:
        def go() -> None:
            self.mode = mode
            if mode == "cut":
                for w in list(self.writers):
                    w.close()
                self.writers.clear()

        self.loop.call_soon_threadsafe(go)
        time.sleep(0.05)

    def close(self) -> None:
        self.set("cut")
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _money(url: str, period: str, pid: str) -> tuple[int, int]:
    """(project's ledger micros, sum of the usage records' costs) in the store."""
    engine = db.make_engine(url)
    try:
        async with engine.connect() as c:
            ledger = (
                await c.execute(
                    select(SpendLedger.micros).where(
                        SpendLedger.period == period, SpendLedger.scope == "project", SpendLedger.scope_id == pid
                    )
                )
            ).scalar()
            usage = (await c.execute(select(func.coalesce(func.sum(UsageRequest.cost_micros), 0)))).scalar()
        return int(ledger or 0), int(usage or 0)
    finally:
        await engine.dispose()


def _spent(srv: RunningServer) -> tuple[int, int]:
    return srv.call(billing_of(srv).spent("project", srv.project_id))


def _gateway(gateways: Gateways, fake: FakeUpstream, redis_url: str, extra: str = "", **env: str) -> RunningServer:
    return gateways.start(config(fake, extra), KEYPLANE_REDIS_URL=redis_url, KEYPLANE_REDIS_PREFIX="kprec", **env)


# --- 1 and 4: kill -9 right after spending ------------------------------------------------------------


def test_kill9_right_after_spending_does_not_sell_the_limit_again(gateways, fake):
    home = gateways.home()  # the processes are real ones (kill -9): the factory's home, not its server
    init = json.loads((home / "init.json").read_text())
    (home / "keyplane.toml").write_text(config(fake))
    # The applier waits 30 s: at the kill, every record (and so every cost) is only in the journal.
    env = {"KEYPLANE_USAGE_APPLY_SECONDS": "30", "KEYPLANE_LOG_REQUESTS": "false"}
    a = Proc(home, env)
    try:
        a.wait_ready()
        with httpx.Client(
            base_url=a.base_url + "/v1/organization", headers={"Authorization": f"Bearer {init['admin_key']}"}
        ) as h:
            # answered once this (one) process's billing configuration has the limit (service.after_commit)
            assert h.post(f"/projects/{init['project_id']}/spend_limit", json=LIMIT).status_code == 200
        assert asyncio.run(_fire(a.base_url + "/v1", init["api_key"], 30)) == {"ok": 30}
    finally:
        a.kill9()
    url = database_url_for("", home)
    period = time.strftime("%Y-%m", time.gmtime())
    assert asyncio.run(_money(url, period, init["project_id"])) == (0, 0)  # nothing reached SQL

    b = Proc(home, env)
    try:
        b.wait_ready()
        assert asyncio.run(_fire(b.base_url + "/v1", init["api_key"], 30)) == {
            "ok": 20,
            "project_spend_limit_exceeded": 10,
        }
    finally:
        assert b.terminate()  # drains the journal: the ledger is rebuilt from it
    assert asyncio.run(_money(url, period, init["project_id"])) == (50 * COST, 50 * COST)


# --- 3: Redis restarted empty ----------------------------------------------------------------------


def test_redis_restarted_empty_is_rebuilt_before_admitting(gateways, fake, redis_server):
    srv = _gateway(
        gateways,
        fake,
        redis_server.url,
        "[limits]\nenabled = false\n",
        KEYPLANE_USAGE_APPLY_SECONDS="30",
    )
    try:
        with admin_http(srv) as h:
            h.post(f"/projects/{srv.project_id}/spend_limit", json=LIMIT)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 30}
        redis_server.kill()
        redis_server.start()  # empty; the 30 costs are only in this instance's journal
        assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 20, "project_spend_limit_exceeded": 10}
        assert _spent(srv) == (50 * COST, 0)
    finally:
        gateways.stop(srv)


def test_rate_buckets_do_not_come_back_full_after_a_redis_loss(gateways, fake, redis_server):
    srv = _gateway(gateways, fake, redis_server.url)
    try:
        with admin_http(srv) as h:
            r = h.post(f"/projects/{srv.project_id}/rate_limits/rl-gpt-4o-mini", json={"max_requests_per_1_minute": 10})
            assert r.status_code == 200, r.text  # answered once billing has the limit (service.set_rate_limit)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 15)) == {"ok": 10, "rate_limit_exceeded": 5}
        redis_server.kill()
        redis_server.start()
        # Conservative: as if the minute's requests had just been used at the rebuild (not 10 more at once).
        got = asyncio.run(_fire(srv.v1, srv.api_key, 15))
        assert got["ok"] <= 1 and got["ok"] + got["rate_limit_exceeded"] == 15
    finally:
        gateways.stop(srv)


# --- 2: Redis cut during settles -------------------------------------------------------------------


def test_settles_cut_off_from_redis_are_replayed(gateways, fake, redis_server):
    proxy = Proxy(redis_server.port)
    srv = _gateway(gateways, fake, proxy.url, "[limits]\nenabled = false\n")
    try:
        with admin_http(srv) as h:
            h.post(f"/projects/{srv.project_id}/spend_limit", json=LIMIT)
        body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

        async def held() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as c:

                async def one() -> int:
                    r = await c.post(
                        srv.v1 + "/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {srv.api_key}", "x-fake-latency-ms": "1500"},
                    )
                    return r.status_code

                tasks = [asyncio.create_task(one()) for _ in range(30)]
                deadline = time.monotonic() + 10
                while await asyncio.to_thread(_spent, srv) != (0, 30 * COST):  # all admitted, none answered yet
                    assert time.monotonic() < deadline, "the 30 requests were never all admitted"
                    await asyncio.sleep(0.02)  # poll interval (a deadline loop)
                proxy.set("cut")  # the settles fail
                return await asyncio.gather(*tasks)

        assert asyncio.run(held()) == [200] * 30
        assert len(srv.app.runtime.features.billing.limiter.pending) == 30
        proxy.set("open")
        deadline = time.monotonic() + 10
        while billing_of(srv).limiter.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _spent(srv) == (30 * COST, 0)  # replayed once each, reservations released
        srv.call(billing_of(srv).flush())
        assert srv.call(billing_of(srv).limiter.retry_pending()) == 0
        assert asyncio.run(_fire(srv.v1, srv.api_key, 30)) == {"ok": 20, "project_spend_limit_exceeded": 10}
    finally:
        gateways.stop(srv)
        proxy.close()


# --- 7: admissions that time out do not hold budget ---------------------------------------------------


def test_timed_out_admissions_release_their_reservations(gateways, fake, redis_server):
    proxy = Proxy(redis_server.port)
    srv = _gateway(gateways, fake, proxy.url, "[limits]\nenabled = false\n")
    try:
        with admin_http(srv) as h:
            h.post(f"/projects/{srv.project_id}/spend_limit", json=LIMIT)
        assert asyncio.run(_fire(srv.v1, srv.api_key, 45)) == {"ok": 45}
        proxy.set("blackhole")  # Redis takes the commands and answers nothing
        r = httpx.post(
            srv.v1 + "/chat/completions",
            headers={"Authorization": f"Bearer {srv.api_key}"},
            timeout=30,
            json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
        proxy.set("cut")
        proxy.set("open")
        deadline = time.monotonic() + 10
        while _spent(srv)[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _spent(srv) == (45 * COST, 0)  # nothing held by the failed admission
        assert asyncio.run(_fire(srv.v1, srv.api_key, 10)) == {"ok": 5, "project_spend_limit_exceeded": 5}
    finally:
        gateways.stop(srv)
        proxy.close()
