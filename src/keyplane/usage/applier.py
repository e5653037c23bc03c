"""Applies journal records to SQL in batches, idempotently by request id, and replays dead writers.

One transaction per batch: insert the per-request rows with ON CONFLICT (id) DO NOTHING RETURNING
id, then add only the rows really inserted to the minute/hour/day rollups (upserts that add). A
batch applied twice (a crash between the commit and the "applied" offset file, or two processes
replaying the same orphan) therefore changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyplane.usage import rollups
from keyplane.usage.journal import JournalWriter, Record, Tail, try_lock, writers_in
from keyplane.usage.models import DIMS, ROLLUPS, SUMS, UsageRequest

log = logging.getLogger("keyplane.usage")

_REQUEST_CHUNK = 400  # rows per INSERT: 24 columns, well under the bind-parameter limits
_ROLLUP_CHUNK = 1000
ORPHAN_SCAN_SECONDS = 30.0
PRUNE_SECONDS = 600.0


def _insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT with ON CONFLICT support, in the dialect of the store."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def apply_records(engine: AsyncEngine, records: Sequence[Record]) -> int:
    """Write records to SQL in one transaction; returns how many were new."""
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.id, r)
    if not unique:
        return 0
    rows = [rollups.request_row(r) for r in unique.values()]
    async with engine.begin() as conn:
        inserted: set[str] = set()
        for i in range(0, len(rows), _REQUEST_CHUNK):
            stmt = (_insert(conn, UsageRequest).values(rows[i:i + _REQUEST_CHUNK])
                    .on_conflict_do_nothing(index_elements=["id"]).returning(UsageRequest.id))
            inserted.update((await conn.execute(stmt)).scalars())
        new = [r for r in unique.values() if r.id in inserted]
        if new:
            for granularity, table in ROLLUPS:
                agg = rollups.rollup_rows(new, granularity)
                for i in range(0, len(agg), _ROLLUP_CHUNK):
                    ins = _insert(conn, table).values(agg[i:i + _ROLLUP_CHUNK])
                    stmt = ins.on_conflict_do_update(
                        index_elements=["bucket", *DIMS],
                        set_={s: getattr(table, s) + getattr(ins.excluded, s) for s in SUMS})
                    await conn.execute(stmt)
    return len(new)


class Applier:
    """The background task: own journal every ``interval`` (or sooner when a batch is full), dead
    writers' journals at start and every ORPHAN_SCAN_SECONDS, retention every PRUNE_SECONDS."""

    def __init__(self, engine: AsyncEngine, folder: Path, writer: JournalWriter, *, batch: int, interval: float,
                 prune: Callable[[], Any] | None = None, on_applied: Callable[[int], None] | None = None) -> None:
        self.engine = engine
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
        self.failures = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def lag(self) -> int:
        return self.writer.appended - self.applied + len(self.fallback)

    def notify(self) -> None:
        """Called after each append: wake the task early when a whole batch is waiting."""
        if self.writer.appended - self.applied >= self.batch and not self._wake.is_set():
            self._wake.set()

    async def apply_pending(self) -> int:
        """Apply everything our own journal holds now; returns the records applied."""
        total = 0
        async with self._lock:
            while self.fallback:
                chunk = self.fallback[: self.batch]
                await apply_records(self.engine, chunk)
                del self.fallback[: len(chunk)]
                total += len(chunk)
            while True:
                recs = self.own.read(self.batch)
                if recs:
                    await apply_records(self.engine, recs)
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
                tail = Tail(self.folder, writer, final=True)
                while True:
                    recs = tail.read(self.batch)
                    if recs:
                        await apply_records(self.engine, recs)
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

    async def _run(self) -> None:
        next_scan = next_prune = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.apply_pending()
                now = time.monotonic()
                if now >= next_scan:
                    await self.replay_orphans()
                    next_scan = now + ORPHAN_SCAN_SECONDS
                if self.prune is not None and now >= next_prune:
                    await self.prune()
                    next_prune = now + PRUNE_SECONDS
                if self.failures:
                    log.info("usage journal: applying to the store works again (lag %d records)", self.lag)
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("usage journal: cannot apply to the store (%s: %s); %d records wait in the journal",
                                type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", self.lag)
                await asyncio.sleep(min(30.0, self.interval * 2 ** min(self.failures, 6)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-applier")

    async def stop(self, drain_seconds: float = 15.0) -> bool:
        """Stop the task and drain: True when everything was applied (the files are then removed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        drained = False
        try:
            await asyncio.wait_for(self.apply_pending(), drain_seconds)
            drained = not self.fallback and self.own.at_end()
        except Exception as e:  # the store is down: the journal keeps the records for the next start
            log.warning("usage journal: could not drain at shutdown (%s); %d records will be applied at the next "
                        "start", type(e).__name__, self.lag)
        return drained
