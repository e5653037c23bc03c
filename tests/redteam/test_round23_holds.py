"""Round 23 red-team review of the holds (usage/holds.py, commit 79735c7): a request under a money control leaves a
hold before it goes upstream, freed once its record is journaled; a restart bills a dead writer's holds at their
reservations and counts them in the budgets once.

Found, each failing as this round found it and passing with its fix:
1. ``test_holds_counted_even_when_the_first_count_fails``: ``Applier.replay_orphans`` claims a dead writer's
   holds (journals them and *unlinks the holds file*) before ``Billing.dead_holds`` adds them to the budget
   counters. When that top-up fails (Redis unreachable for a moment: the fleet case it exists for), the exception
   ends the scan and the next scan finds no holds file: the requests are in SQL but never in the counters, so the
   hard limit is sold again by their reservations. Fixed: the holds are counted first (once per writer: a retry adds
   nothing), then journaled and their file removed (usage/applier.py replay_orphans).
2. ``test_shutdown_mid_stream_bills_what_was_relayed_not_the_reservation``: a clean stop (SIGTERM) while a stream
   runs past uvicorn's graceful timeout cancels the request's task; the handler re-raises a CancelledError the
   watch did not fire, so the request is never settled nor recorded and its hold stays: the next start bills the
   whole reservation (max_tokens), though the process was alive and knew how little had been relayed (a client
   disconnect bills the relay's estimate). Fixed: a cancellation the watch did not fire settles and records the
   request at what was relayed, then goes on (proxy/handler.py).
3. ``test_a_realtime_responses_hold_is_recorded_as_realtime``: a realtime response's hold is written during
   admission, while its context still carries the quoting endpoint (/v1/responses); a killed session's responses
   are billed as Responses API calls, not under /v1/realtime (the kind the usage API reports). Fixed: the hold is
   made again under /v1/realtime once admitted, the new one before the old one is freed (Recorder.rehold).

Held (regression tests): holds freed after every normal outcome (JSON, stream, upstream error, client disconnect,
response-cache hit); a clean stop with nothing running leaves no holds file and bills nothing extra; a dead
writer's hold whose request is already in SQL is counted once at restart (seed and claim); hold/release from two
threads (the serving loop and the applier's) never share a slot and leave the table exact.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from keyplane.testing import FakeUpstream
from keyplane.usage import journal_folder
from keyplane.usage.holds import Holds, read_holds
from keyplane.usage.journal import JournalWriter, Record
from tests.billing.conftest import (
    COST,
    billing_of,
    clean_redis,
    config,
    flush,
    ledger_micros,
    redis_env,
    set_spend_limit,
    unique_prefix,
)
from tests.support import Gateways, RunningServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}  # COST each
BIG = 1000  # max_tokens of a stream reserved at BIG * COST / 5
_CACHE = '\n[cache]\nprojects = ["*"]\nttl = "10m"\n'


def _auth(srv: RunningServer) -> dict[str, str]:
    return {"authorization": f"Bearer {srv.api_key}"}


def _holds(srv: RunningServer) -> Holds:
    h = srv.app.runtime.features.usage_holds
    assert h is not None
    return h


def _wait_released(srv: RunningServer, timeout: float = 10) -> None:
    holds = _holds(srv)
    deadline = time.monotonic() + timeout
    while holds.held:
        assert time.monotonic() < deadline, f"{holds.held} holds never freed: {read_holds(holds.path)}"
        time.sleep(0.05)  # poll interval (a deadline loop)
    assert read_holds(holds.path) == []


def _dead_writer_with_holds(srv: RunningServer, ids: list[str], cost: int) -> str:
    """A writer of this home's journal folder that died holding ``ids`` (each at ``cost``): its lock released."""
    rt = srv.app.runtime
    folder = journal_folder(rt.settings)
    dead = JournalWriter(folder)
    dead.open()
    holds = Holds(folder, dead.writer)
    for rid in ids:
        holds.hold(
            Record(
                rid, rt.clock.now(), rt.snapshot.org_id, srv.project_id, "key_dead", None, "gpt-4o-mini", None,
                "completions", "/v1/chat/completions", 0, cost_micros=cost, estimated=True,
            )
        )  # fmt: skip
    holds.close()
    dead.close()
    dead.release()
    return dead.writer


# --- held: every normal outcome frees its hold ---------------------------------------------------------------------


def test_holds_freed_after_every_outcome_of_a_money_controlled_request(gateways: Gateways, fake: FakeUpstream) -> None:
    """Secure: JSON, stream, an upstream error, a client that leaves mid-stream and a response-cache hit each free
    the hold their admission wrote (nothing left to bill again after a later crash)."""
    srv = gateways.start(config(fake, _CACHE))
    set_spend_limit(srv, 1000)
    h = _auth(srv)
    with httpx.Client(base_url=srv.v1, timeout=30) as c:
        assert c.post("/chat/completions", json=CHAT, headers=h).status_code == 200
        _wait_released(srv)
        assert c.post("/chat/completions", json=CHAT, headers=h).status_code == 200  # a cache hit
        _wait_released(srv)
        body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "stream"}]}
        with c.stream("POST", "/chat/completions", json=body, headers=h) as r:
            assert r.status_code == 200
            r.read()
        _wait_released(srv)
        r2 = c.post("/chat/completions", json={**CHAT, "user": "e"}, headers={**h, "x-fake-status": "400"})
        assert r2.status_code == 400
        _wait_released(srv)
        slow = {**h, "x-fake-chunk-delay-ms": "500", "x-fake-text": " ".join(["w"] * 20)}
        body = {**CHAT, "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": "leave"}]}
        with c.stream("POST", "/chat/completions", json=body, headers=slow) as r:
            assert r.status_code == 200
            next(r.iter_bytes())
            assert _holds(srv).held == 1  # running: held
        # the client left mid-stream: settled as a disconnect
        _wait_released(srv)


def test_clean_stop_with_nothing_running_leaves_no_holds_and_bills_nothing_extra(
    gateways: Gateways, fake: FakeUpstream
) -> None:
    """Secure: a clean stop with no request running removes the holds file; the next start counts exactly what
    was served."""
    home = gateways.home()
    srv = gateways.start(config(fake), home=home)
    set_spend_limit(srv, 1000)
    for _ in range(3):
        assert httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers=_auth(srv)).status_code == 200
    folder = journal_folder(srv.app.runtime.settings)
    pid = srv.project_id
    gateways.stop(srv)
    assert list(folder.glob("*.holds")) == []
    b = gateways.start(config(fake), home=home)
    assert b.call(billing_of(b).spent("project", pid))[0] == 3 * COST
    flush(b)
    assert ledger_micros(b, "project", pid) == 3 * COST


# --- held: a hold whose request is already in SQL is counted once ------------------------------------------------


def test_a_dead_hold_whose_record_is_in_sql_is_counted_once_at_restart(gateways: Gateways, fake: FakeUpstream) -> None:
    """Secure: a process killed after its record reached SQL but before the hold was freed (the journal-full path
    frees a hold only once the record is in SQL) leaves a hold with the same id: the restart's seed and the claim
    count the request once, as it finished."""
    home = gateways.home()
    srv = gateways.start(config(fake), home=home)
    set_spend_limit(srv, 1000)
    r = httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers=_auth(srv))
    assert r.status_code == 200
    rid = r.headers["x-keyplane-request-id"]
    flush(srv)
    pid = srv.project_id
    assert ledger_micros(srv, "project", pid) == COST
    _dead_writer_with_holds(srv, [rid], 50 * COST)  # its hold at a much larger reservation
    gateways.stop(srv)
    b = gateways.start(config(fake), home=home)
    assert b.call(billing_of(b).spent("project", pid))[0] == COST
    flush(b)
    assert ledger_micros(b, "project", pid) == COST


# --- held: two threads --------------------------------------------------------------------------------------------


def test_hold_and_release_from_two_threads_never_share_a_slot(tmp_path: Path) -> None:
    """Secure: the serving loop holds while the applier's thread releases (the journal-full path), the table
    growing meanwhile: no slot is ever given to two running requests, and the table ends exact."""
    t = Holds(tmp_path, "w1", initial_slots=2)
    owner: dict[int, str] = {}
    guard = threading.Lock()
    errors: list[str] = []
    kept: list[str] = []

    def rec(name: str) -> Record:
        return Record(
            name, 1.0, "o", "p", "k", None, "m", None, "completions", "/v1/chat/completions", 0, cost_micros=1
        )

    def work(tag: str) -> None:
        mine: list[int] = []
        for i in range(3000):
            slot = t.hold(rec(f"{tag}{i}"))
            with guard:
                if slot in owner:
                    errors.append(f"slot {slot} given to {tag}{i} while {owner[slot]} holds it")
                owner[slot] = f"{tag}{i}"
            mine.append(slot)
            if i % 7 == 0:  # some stay held
                with guard:
                    kept.append(owner[slot])
                continue
            if len(mine) > 3:
                s = mine.pop(0)
                with guard:
                    if owner.get(s, "").startswith(tag) and owner[s] not in kept:
                        del owner[s]
                        t.release(s)
                    else:
                        mine.append(s)
        for s in mine:
            with guard:
                if s in owner and owner[s] not in kept:
                    del owner[s]
                    t.release(s)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    got = sorted(r.id for r in read_holds(t.path))
    assert got == sorted(kept) and t.held == len(kept)
    t.close()


# --- 1. counting a dead writer's holds fails after the claim -------------------------------------------------------


@pytest.mark.redis
def test_holds_counted_even_when_the_first_count_fails(
    gateways: Gateways, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secure: a fleet instance (counters in Redis) finds a dead writer's holds and Redis refuses the top-up once (a
    blip): the holds file stays, the next scan counts them once, and the requests are in SQL once."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    prefix = unique_prefix()
    srv = gateways.start(config(fake), **redis_env(prefix))
    try:
        set_spend_limit(srv, 1000)
        _dead_writer_with_holds(srv, ["req_dead0", "req_dead1"], COST)
        b = billing_of(srv)
        real = b.limiter.top_up
        calls = {"n": 0}

        async def blip(marker: str, spent: dict[str, int]) -> bool:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            return await real(marker, spent)

        monkeypatch.setattr(b.limiter, "top_up", blip)
        applier = srv.app.runtime.features.usage_applier
        assert applier is not None
        with contextlib.suppress(RedisConnectionError):
            srv.call(applier.replay_orphans())  # the blip
        srv.call(applier.replay_orphans())  # the next orphan scan, Redis back
        flush(srv)
        assert ledger_micros(srv, "project", srv.project_id) == 2 * COST  # billed in SQL...
        assert srv.call(b.spent("project", srv.project_id))[0] == 2 * COST, "...but never counted in the budget"
    finally:
        gateways.stop(srv)
        clean_redis(prefix)


# --- 2. a clean stop with a stream running ---------------------------------------------------------------------------


def test_shutdown_mid_stream_bills_what_was_relayed_not_the_reservation(gateways: Gateways, fake: FakeUpstream) -> None:
    """Secure: a clean stop while a stream runs past the graceful timeout cancels the request; it is settled and
    recorded at what was relayed (a few words), its hold freed: the next start does not bill the whole reservation
    (BIG tokens)."""
    home = gateways.home()
    srv = gateways.start(config(fake), home=home)
    set_spend_limit(srv, 100_000)
    pid = srv.project_id
    folder = journal_folder(srv.app.runtime.settings)
    reservation = BIG * COST // 5
    got: list[bytes] = []

    def stream() -> None:
        h = {**_auth(srv), "x-fake-chunk-delay-ms": "1000", "x-fake-text": " ".join(["w"] * 40)}
        body = {**CHAT, "stream": True, "max_tokens": BIG}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", srv.v1 + "/chat/completions", json=body, headers=h, timeout=60) as r,
        ):
            for chunk in r.iter_bytes():
                got.append(chunk)

    th = threading.Thread(target=stream, daemon=True)
    th.start()
    deadline = time.monotonic() + 15
    while not got:
        assert time.monotonic() < deadline
        time.sleep(0.05)  # poll interval (a deadline loop)
    assert _holds(srv).held == 1
    gateways.stop(srv)  # SIGTERM's path: graceful timeout (5 s in tests), then the running tasks are cancelled
    th.join(30)
    left = [r for p in folder.glob("*.holds") for r in read_holds(p)]
    b = gateways.start(config(fake), home=home)
    flush(b)
    billed = ledger_micros(b, "project", pid)
    assert billed > 0, "the stream was not billed at all"
    assert billed < reservation, (
        f"a few words relayed, billed {billed} micro-dollars, the full reservation ({reservation}); "
        f"left in the holds file by the clean stop: {[(r.id, r.cost_micros) for r in left]}"
    )


# --- 3. a realtime response's hold ---------------------------------------------------------------------------------


def test_a_realtime_responses_hold_is_recorded_as_realtime(gateways: Gateways, fake: FakeUpstream) -> None:
    """Secure: a realtime response admitted under a spend limit: its hold (what a killed process bills) says
    /v1/realtime, as its record would, not the quoting endpoint /v1/responses."""
    from keyplane.proxy import realtime_meter as meter
    from keyplane.proxy.realtime_policy import PATH

    srv = gateways.start(config(fake, "context_window = 128000\n"))  # gpt-4o-mini's: a response is bounded
    set_spend_limit(srv, 100_000)
    rt = srv.app.runtime
    entry = next(e for e in rt.snapshot.keys_by_id.values() if e.project_id == srv.project_id)
    ctx = srv.call(meter.admit(rt, meter.response_context(entry, "gpt-4o-mini", 5, None, None, "fake")))
    try:
        held = read_holds(_holds(srv).path)
        assert len(held) == 1 and held[0].id == ctx.request_id
        expected = srv.app.runtime.features.usage_recorder.build(ctx, 1.0)  # what its record says
        assert (held[0].endpoint, held[0].kind) == (PATH, expected.kind)
    finally:
        srv.call(meter.settle(rt, ctx, {}, 200))
    _wait_released(srv)
