"""Round 22 red-team review: the SINGLE-NODE default (SQLite store under KEYPLANE_HOME, in-process limiter, the
usage journal) under faults: kill -9 with spend in flight, the journal unable to take a record (a full disk), a
segment rotation that fails, the store locked by another writer (a backup, a CLI command).

Found, each failing as this round found it and passing with its fix:
1. kill -9 with requests in flight against a spend limit sold the limit again: the in-process limiter's
   reservations died with the process, and a request still running leaves no usage record, so the restarted
   process seeded its counters from the ledger and the journal alone and admitted a whole new limit's worth while
   the provider had already served (and billed) the first. Admission now writes a *hold* of every request under a
   money control into a memory-mapped table before it goes upstream (usage/holds.py: no system call, and it
   survives a killed process like a write() does); the recorder frees it once the request's record is journaled.
   A restart counts a dead writer's holds in the budgets before it admits anything, and journals them as records
   of their own (status 0, estimated, at their reservation), so the SQL ledger keeps them across later restarts.
2. The journal unable to take a record (ENOSPC) kept money-controlled spend in memory only: lost by a crash. The
   hold now stays until the record is in SQL; a hold that cannot be kept (the table full and unable to grow)
   refuses the request with 503 ``usage_journal_unavailable`` before any upstream call.
3. A segment rotation that failed (a full disk, an unwritable folder: ``os.open`` of the next segment raising) left
   the writer appending to the fd it had just retired; ``sync`` closed that fd and the next appends went to
   whatever file reused the number (a client socket, the SQLite database). journal.py opens the next segment
   before retiring the current one, and keeps appending to the current one when it cannot.

Held (kept as regression tests): the SQLite file locked by another writer (BEGIN IMMEDIATE for seconds) while
requests hit a spend limit: admission enforces from memory (exactly the limit's worth admitted, the rest 429, no
500), and every record reaches the store once the lock is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI, RateLimitError
from sqlalchemy import func, select

from keyplane.testing import FakeUpstream
from keyplane.usage.holds import read_holds
from keyplane.usage.journal import JournalWriter, Record
from keyplane.usage.models import UsageRequest
from tests.billing.conftest import COST, billing_of, config, flush, ledger_micros, set_spend_limit
from tests.support import Gateways, RunningServer
from tests.usage.support import Proc

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}  # COST each
N = 5  # requests the spend limit covers: 4 cents = 40000 micro-dollars = 5 * COST
LIMIT_CENTS = N * COST // 10_000


def _sdk(srv_or_url: RunningServer | str, key: str) -> OpenAI:
    base = srv_or_url if isinstance(srv_or_url, str) else srv_or_url.v1
    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)


def _chat(client: OpenAI) -> int:
    try:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    except RateLimitError as e:
        return e.status_code
    except Exception as e:
        return getattr(e, "status_code", -1)
    return 200


# --- 1. kill -9 with spend in flight ----------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_with_streams_in_flight_at_the_limit_does_not_sell_the_limit_again(
    gateways: Gateways, fake: FakeUpstream
) -> None:
    """Secure: a request admitted against a spend limit has reached the provider, which bills it whatever happens
    to keyplane. When the process is killed (-9) with such requests running, the restarted process counts them at
    their reservation before it admits anything: a client retrying across the restart gets no new limit's worth.
    The charge is durable (a later clean restart still counts it)."""
    home = gateways.home()
    srv = gateways.start(config(fake), home=home)
    set_spend_limit(srv, LIMIT_CENTS)
    key = srv.api_key
    period = billing_of(srv).period
    pid = srv.project_id
    gateways.stop(srv)

    proc = Proc(home, {"KEYPLANE_USAGE_APPLY_SECONDS": "0.2"})
    try:
        proc.wait_ready()

        def in_flight() -> int:
            return sum(1 for r in fake.requests.copy() if not r.finished and not r.path.startswith("/_fake"))

        async def hold_streams() -> None:
            h = {
                "authorization": f"Bearer {key}",
                "x-fake-chunk-delay-ms": "1500",
                "x-fake-text": " ".join(["slow"] * 5),
            }
            async with httpx.AsyncClient(base_url=proc.base_url, timeout=60) as c:

                async def one() -> None:
                    with contextlib.suppress(httpx.HTTPError):
                        body = {**CHAT, "stream": True}
                        async with c.stream("POST", "/v1/chat/completions", json=body, headers=h) as r:
                            assert r.status_code == 200
                            async for _ in r.aiter_bytes():
                                pass

                tasks = [asyncio.create_task(one()) for _ in range(N)]
                deadline = time.monotonic() + 15
                while in_flight() < N:
                    assert time.monotonic() < deadline, f"{in_flight()} of {N} streams reached the upstream"
                    await asyncio.sleep(0.02)  # poll interval (a deadline loop)
                # The limit is fully reserved: one more is refused.
                r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
                assert r.status_code == 429, r.text
                proc.kill9()  # mid-stream: none of them has finished
                await asyncio.gather(*tasks)

        asyncio.run(hold_streams())
    finally:
        if proc.p.poll() is None:
            proc.kill9()

    # Restarted on the same home: the client retries.
    b = gateways.start(config(fake), home=home)
    statuses = [_chat(_sdk(b, key)) for _ in range(3)]
    assert statuses == [429, 429, 429], statuses
    flush(b)
    assert ledger_micros(b, "project", pid, period) == N * COST  # the killed streams billed at their bound
    gateways.stop(b)

    c = gateways.start(config(fake), home=home)  # a clean restart: the charge is in the ledger now
    assert _chat(_sdk(c, key)) == 429


# --- 2. the journal cannot take a record ----------------------------------------------------------------------


def _swap_journal_fd(srv: RunningServer, fd: int) -> int:
    writer = srv.app.runtime.features.usage_writer
    good, writer._fd = writer._fd, fd
    return good


def test_journal_full_keeps_the_holds_of_money_controlled_requests_until_their_records_are_in_sql(
    gateways: Gateways, fake: FakeUpstream
) -> None:
    """Secure: with the journal's disk full (its segment's fd on /dev/full: every write() fails with ENOSPC) the
    records of requests under a spend limit live in memory until the applier has them in SQL; their holds
    (usage/holds.py, allocated up front) stay meanwhile, so a crash then still bills them at their reservation.
    The limit is enforced exactly; once in SQL, the holds are freed and the ledger has each request once.
    The applier waits for ``flush`` (an hour between its own passes): on a loaded machine it would otherwise apply
    (and free) the first records before the test reads the holds."""
    srv = gateways.start(config(fake), KEYPLANE_USAGE_APPLY_SECONDS="3600")
    set_spend_limit(srv, LIMIT_CENTS)
    holds = srv.app.runtime.features.usage_holds
    assert holds is not None
    full = os.open("/dev/full", os.O_WRONLY)
    good = _swap_journal_fd(srv, full)
    try:
        statuses = [_chat(_sdk(srv, srv.api_key)) for _ in range(N + 2)]
        assert statuses == [200] * N + [429, 429], statuses
        held = read_holds(holds.path)
        assert len(held) == N  # every served one, none of the refused
        assert all(r.cost_micros >= COST and r.estimated and r.status == 0 for r in held)
    finally:
        _swap_journal_fd(srv, good)
        os.close(full)
    flush(srv)
    assert read_holds(holds.path) == []  # in SQL now: freed
    assert ledger_micros(srv, "project", srv.project_id, billing_of(srv).period) == N * COST


def test_holds_table_that_cannot_grow_refuses_money_controlled_requests_before_the_upstream(
    gateways: Gateways, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secure: a request under a spend limit is served only when its hold can be kept. Every slot taken and the
    disk full (posix_fallocate failing with ENOSPC): 503 ``usage_journal_unavailable`` before any upstream call,
    nothing left reserved; with room again, the limit is served exactly."""
    import errno

    from keyplane.usage import holds as holds_mod

    srv = gateways.start(config(fake))
    set_spend_limit(srv, LIMIT_CENTS)
    holds = srv.app.runtime.features.usage_holds
    assert holds is not None

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    free = list(holds._free)
    holds._free.clear()
    monkeypatch.setattr(holds_mod.os, "posix_fallocate", no_space)
    before = len(fake.model_requests())
    r = httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "usage_journal_unavailable"
    assert len(fake.model_requests()) == before  # never reached the provider
    assert srv.call(billing_of(srv).spent("project", srv.project_id)) == (0, 0)
    assert not billing_of(srv).renewal.in_flight
    monkeypatch.undo()
    holds._free.extend(free)
    statuses = [_chat(_sdk(srv, srv.api_key)) for _ in range(N + 1)]
    assert statuses == [200] * N + [429], statuses


# --- 3. a segment rotation that fails ---------------------------------------------------------------------------


def _rec(i: int) -> Record:
    return Record(f"req_{i}", 1.0, "org", "proj", "key", None, "m", "up", "completions", "/v1/chat/completions", 200)


def test_failed_segment_rotation_never_writes_through_a_closed_fd(tmp_path: Path, monkeypatch) -> None:
    """Secure: when the next segment cannot be created (ENOSPC, EACCES), the writer keeps appending to the segment
    it has; it never writes through an fd it retired (closed by ``sync``), whose number the process reuses for
    another file (a socket, the SQLite database)."""
    import errno

    from keyplane.usage import journal as journal_mod

    w = JournalWriter(tmp_path / "j", segment_bytes=64)
    w.open()
    real_open = os.open

    def no_new_segment(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        if str(path).endswith(".seg"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(journal_mod.os, "open", no_new_segment)
    with contextlib.suppress(OSError):
        w.append(_rec(1))  # reaches segment_bytes: the rotation fails
    monkeypatch.setattr(journal_mod.os, "open", real_open)
    with contextlib.suppress(OSError):
        w.sync()
    victim = tmp_path / "victim"
    fd = os.open(victim, os.O_RDWR | os.O_CREAT, 0o600)  # takes the lowest free number: a retired one, if closed
    try:
        with contextlib.suppress(OSError):
            w.append(_rec(2))
        assert victim.stat().st_size == 0, "a journal frame was written into another file"
    finally:
        os.close(fd)
    w.close()
    w.release()
    from keyplane.usage.journal_tail import Tail

    got = [r.id for r in Tail(tmp_path / "j", w.writer, final=True).read(100)]
    assert got == ["req_1", "req_2"]


# --- held: the SQLite file locked by another writer --------------------------------------------------------------


def test_sqlite_locked_by_another_writer_keeps_enforcing_and_loses_nothing(
    gateways: Gateways, fake: FakeUpstream
) -> None:
    """Secure: another process holding SQLite's write lock for seconds (a backup, `sqlite3` with BEGIN IMMEDIATE)
    does not stop enforcement: admission counts from memory, exactly the limit's worth is admitted, the rest are
    429 (no 500, no hang), and every record reaches the store (and the ledger) once the lock is released."""
    srv = gateways.start(config(fake))
    set_spend_limit(srv, LIMIT_CENTS)
    db_path = srv.app.runtime.engine.url.database
    assert db_path
    locker = sqlite3.connect(db_path, timeout=5, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(3)
        locker.rollback()
        locker.close()
        released.set()

    threading.Thread(target=release_later, daemon=True).start()
    client = _sdk(srv, srv.api_key)
    statuses = [_chat(client) for _ in range(N + 3)]
    assert not released.is_set(), "the lock was released before the requests ran: the test proves nothing"
    assert statuses == [200] * N + [429] * 3, statuses
    assert released.wait(10)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(Exception):
            flush(srv)
            if ledger_micros(srv, "project", srv.project_id, billing_of(srv).period) == N * COST:
                break
        assert time.monotonic() < deadline, "the records never reached the store"
        time.sleep(0.1)  # poll interval (a deadline loop)

    async def count() -> int:
        async with srv.app.runtime.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(UsageRequest))).scalar() or 0)

    assert srv.call(count()) == N
