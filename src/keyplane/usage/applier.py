"""Applies journal records to SQL in batches, and replays dead writers.

Records reach the applier in memory from this process's journal writer (the journal append stays the
durability point) or, after a crash, by reading journal files back. Each batch is written by
keyplane.usage.apply_sql in one idempotent transaction (by request id), so applying one twice is harmless.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.periodic import backoff, cancel_and_wait
from keyplane.usage import holds as holds_mod
from keyplane.usage.apply_sql import APPLY_STEPS, ApplyStep, apply_blocking, apply_records
from keyplane.usage.holds import Holds
from keyplane.usage.journal import JournalWriter, Position, Record, try_lock, writers_in
from keyplane.usage.journal_tail import Tail

__all__ = ["APPLY_STEPS", "Applier", "ApplyStep", "apply_records"]  # billing/ledger.py, tests, bench import these here

log = logging.getLogger("keyplane.usage")

ORPHAN_SCAN_SECONDS = 30.0
PRUNE_SECONDS = 600.0


class Applier:
    """The background task: own journal every ``interval`` (or sooner when a batch is full), dead
    writers' journals at start and every ORPHAN_SCAN_SECONDS, retention every PRUNE_SECONDS.

    Records reach it in memory (``JournalWriter.handoff``): the journal append stays the durability
    point, and the journal is read back only to replay a crash (``replay_orphans``). ``start`` with an
    ``engine_factory`` runs it in a thread of its own, with its own event loop and engine: the SQL
    writes are then scheduled by the GIL's switch interval instead of queueing behind every request
    task of the serving loop (issue 13: the journal lagged 30 s behind under sustained load).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        folder: Path,
        writer: JournalWriter,
        *,
        batch: int,
        interval: float,
        prune: Callable[[], Any] | None = None,
        on_applied: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine  # the store's engine: APPLY_STEPS are registered on it
        self.folder = folder
        self.writer = writer
        self.batch = batch
        self.interval = interval
        self.prune = prune
        self.on_applied = on_applied
        self.own = Tail(folder, writer.writer, final=False, live=writer)
        self.applied = 0  # records of our own journal applied (lag = writer.appended - applied)
        self.replayed = 0  # records of dead writers applied
        self.fallback: list[Record] = []  # records the journal could not take (disk full): applied from memory
        self.fallback_holds: dict[str, int] = {}  # their holds' slots by id, freed once they are in SQL
        self.holds: Holds | None = None  # this process's holds table (usage/holds.py)
        # A dead writer's holds, journaled as records (billing's Billing.dead_holds counts them in the budgets).
        self.on_holds: Callable[[str, list[Record]], Coroutine[Any, Any, None]] | None = None
        self.failures = 0
        # In-memory handoff, when every record of this writer goes through it (a fresh writer).
        self.handoff: collections.deque[tuple[Record, int, int, float]] | None = None
        if writer.appended == 0 and writer.handoff is None and (self.own.pos.segment, self.own.pos.offset) == (0, 0):
            self.handoff = writer.handoff = collections.deque()
        self._inflight: list[tuple[Record, int, int, float]] = []  # taken from handoff, not applied yet
        self._behind_since: float | None = None  # reading the journal back: when a backlog was first seen
        self._apply_engine: AsyncEngine | Engine = engine  # the thread's own engine when threaded
        self._wake = asyncio.Event()
        self._wake_sent = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the applier thread's loop
        self._main: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._run_future: Any = None

    @property
    def lag(self) -> int:
        return self.writer.appended - self.applied + len(self.fallback)

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest record appended but not applied yet (0 when none). Reading the journal back
        (the handoff was dropped), it counts from when the backlog was first seen."""
        if self.handoff is None:
            if self.lag <= 0:
                self._behind_since = None
                return 0.0
            if self._behind_since is None:
                self._behind_since = time.monotonic()
            return time.monotonic() - self._behind_since
        oldest: float | None = None
        inflight = self._inflight
        if inflight:
            oldest = inflight[0][3]
        elif self.handoff is not None:
            with contextlib.suppress(IndexError):
                oldest = self.handoff[0][3]
        return max(0.0, time.monotonic() - oldest) if oldest is not None else 0.0

    def notify(self) -> None:
        """Called after each append: wake the task early when a whole batch is waiting."""
        if self.writer.appended - self.applied >= self.batch and not self._wake_sent:
            self._wake_sent = True
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake.set)
            else:
                self._wake.set()

    async def apply_pending(self) -> int:
        """Apply everything our own journal holds now; returns the records applied. Any loop may call it."""
        return await self._on_own_loop(self._apply_pending)

    async def _on_own_loop(self, fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
        """Run ``fn`` on the applier's loop (its engine belongs there), from whichever loop calls."""
        loop = self._loop
        if loop is not None and threading.current_thread() is not self._thread:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(), loop))
        return await fn()

    async def _apply(self, records: list[Record]) -> int:
        """One batch in one transaction (keyplane.usage.apply_sql), on the thread's own engine when threaded. A
        blocking engine (SQLite) blocks the applier's own loop for the batch, which has nothing else to do."""
        engine = self._apply_engine
        if isinstance(engine, Engine):
            loop = self._loop
            if loop is not None and threading.current_thread() is not self._thread:  # never block another loop
                return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._apply(records), loop))
            return apply_blocking(engine, records, self.engine)
        return await apply_records(engine, records, self.engine)

    async def _apply_pending(self) -> int:
        total = 0
        async with self._lock:
            if self.handoff is not None and self.writer.handoff is not self.handoff:
                # The writer dropped the handoff (too many records waiting: the store is down or slow). The
                # journal holds everything after the committed position: read it back from there.
                oldest = self._inflight[0][3] if self._inflight else (self.handoff[0][3] if self.handoff else None)
                self.handoff, self._inflight = None, []
                self._behind_since = oldest
                log.warning("usage journal: the applier fell %d records behind; reading the journal back", self.lag)
            while self.fallback:
                chunk = self.fallback[: self.batch]
                await self._apply(chunk)
                del self.fallback[: len(chunk)]
                if self.fallback_holds and self.holds is not None:
                    for r in chunk:
                        slot = self.fallback_holds.pop(r.id, -1)
                        if slot >= 0:
                            self.holds.release(slot)
                total += len(chunk)
            while True:
                if self.handoff is not None:
                    if not self._inflight:
                        take: list[tuple[Record, int, int, float]] = []
                        q = self.handoff
                        with contextlib.suppress(IndexError):
                            while len(take) < self.batch:
                                take.append(q.popleft())
                        self._inflight = take
                    recs = [e[0] for e in self._inflight]
                    if recs:
                        await self._apply(recs)
                        last = self._inflight[-1]
                        self.own._next = Position(last[1], last[2])  # the journal position of the last one
                    self._inflight = []
                else:
                    recs = self.own.read(self.batch)
                    if recs:
                        await self._apply(recs)
                self.own.commit()
                self.applied += len(recs)
                total += len(recs)
                if self.on_applied is not None and recs:
                    self.on_applied(len(recs))
                if len(recs) < self.batch:
                    break
        return total

    async def replay_orphans(self) -> int:
        """Apply and remove the journals of writers whose process is gone."""
        total = 0
        for writer in sorted(writers_in(self.folder) - {self.writer.writer}):
            fd = try_lock(self.folder, writer, True)
            if fd is None:
                continue  # alive (or being replayed by another process)
            try:
                # Its holds counted in the budgets first (once per writer: a retry after a failure adds nothing),
                # then journaled as records and their file removed: a failure in between leaves them for the next scan.
                held = await asyncio.to_thread(holds_mod.read_holds, holds_mod.holds_path(self.folder, writer))
                if held and self.on_holds is not None:
                    await self._on_main(self.on_holds(writer, held))
                await asyncio.to_thread(holds_mod.claim, self.folder, writer)
                tail = Tail(self.folder, writer, final=True)
                while True:
                    recs = tail.read(self.batch)
                    if recs:
                        await self._apply(recs)
                    tail.commit()
                    total += len(recs)
                    if not recs:
                        break
                tail.remove_files()
                if total:
                    log.info("usage journal: replayed %d records of writer %s", total, writer)
            finally:
                os.close(fd)
        self.replayed += total
        return total

    async def _prune(self) -> None:
        assert self.prune is not None
        await self._on_main(self.prune())  # the prune runs on the serving loop's engine

    async def _on_main(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the serving loop (from the applier's thread, or on it)."""
        if self._main is not None and threading.current_thread() is self._thread:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._main))
        else:
            await coro

    async def _run(self) -> None:
        next_scan = next_prune = 0.0
        began = time.monotonic()
        while True:
            # One cycle per ``interval`` including the apply itself (not interval + apply): the lag stays
            # about max(interval, apply time) when a sustained load keeps the batches coming.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.interval - (time.monotonic() - began)))
            self._wake.clear()
            self._wake_sent = False
            began = time.monotonic()
            try:
                await self._apply_pending()
                now = time.monotonic()
                if now >= next_scan:
                    await self.replay_orphans()
                    next_scan = now + ORPHAN_SCAN_SECONDS
                if self.prune is not None and now >= next_prune:
                    await self._prune()
                    next_prune = now + PRUNE_SECONDS
                if self.failures:
                    log.info("usage journal: applying to the store works again (lag %d records)", self.lag)
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning(
                        "usage journal: cannot apply to the store (%s: %s); %d records wait in the journal",
                        type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "",
                        self.lag,
                    )
                await asyncio.sleep(backoff(self.failures, self.interval))

    def start(self, engine_factory: Callable[[], AsyncEngine | Engine] | None = None) -> None:
        """Start the task: on the running loop, or (``engine_factory``) in a thread with its own loop and engine
        (a blocking one for a SQLite file: keyplane.store.db.make_blocking_engine)."""
        if engine_factory is None:
            self._task = asyncio.create_task(self._run(), name="usage-applier")
            return
        self._main = asyncio.get_running_loop()
        loop = asyncio.new_event_loop()
        self._apply_engine = engine_factory()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._thread = threading.Thread(target=loop.run_forever, name="usage-applier", daemon=True)
        self._thread.start()
        self._loop = loop
        self._run_future = asyncio.run_coroutine_threadsafe(self._run(), loop)

    async def stop(self, drain_seconds: float = 15.0) -> bool:
        """Stop the task and drain: True when everything was applied (the files are then removed)."""
        await cancel_and_wait(self._task)
        self._task = None
        loop = self._loop
        if self._run_future is not None:
            self._run_future.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(self._run_future)
            self._run_future = None
        drained = False
        try:
            await asyncio.wait_for(self.apply_pending(), drain_seconds)
            # Dead writers' journals too (the replay at start may have failed, and the next scan is an
            # interval away): a clean shutdown leaves no journal another start must replay.
            await asyncio.wait_for(self._on_own_loop(self.replay_orphans), drain_seconds)
            if self.handoff is not None:  # every record appended went through memory: applied == appended
                drained = self.lag == 0 and not self._inflight and not self.handoff
            else:
                drained = not self.fallback and self.own.at_end()
        except Exception as e:  # the store is down: the journal keeps the records for the next start
            log.warning(
                "usage journal: could not drain at shutdown (%s); %d records will be applied at the next start",
                type(e).__name__,
                self.lag,
            )
        if loop is not None and self._thread is not None:
            engine, self._apply_engine = self._apply_engine, self.engine
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_dispose(engine), loop))
            self._loop = None
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(self._thread.join, 10.0)
            if not self._thread.is_alive():
                loop.close()
            self._thread = self._main = None
        return drained


async def _dispose(engine: AsyncEngine | Engine) -> None:
    """Close the applier thread's own engine, on that thread (its connections were made there)."""
    if isinstance(engine, Engine):
        engine.dispose()
    else:
        await engine.dispose()
