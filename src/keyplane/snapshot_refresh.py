"""Keeps the snapshot current (keyplane.snapshot): polls the store's revision off the request path and reloads
on change, or at once when a bus event asks; after each successful poll it publishes a heartbeat carrying the
revision it read, which confirms other instances' freshness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.bus.base import Bus
from keyplane.bus.events import Event
from keyplane.periodic import cancel_and_wait
from keyplane.snapshot import Snapshot

log = logging.getLogger("keyplane.snapshot")


class SnapshotRefresher:
    """Polls the revision off the request path and reloads on change (or at once when the bus asks);
    after each successful poll it publishes a heartbeat carrying the revision it read."""

    def __init__(
        self,
        snapshot: Snapshot,
        engine: AsyncEngine,
        interval: float,
        *,
        bus: Bus | None = None,
        origin: str = "",
        heartbeat_seconds: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.snapshot = snapshot
        self.engine = engine
        self.interval = interval
        self.bus = bus
        self.origin = origin
        self.heartbeat_seconds = heartbeat_seconds
        self.timeout = max(timeout, interval)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._beat_at = 0.0
        self._beat: asyncio.Task[None] | None = None
        self._failing = False
        snapshot.reload_wanted = self._wake.set

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            rev = await self.snapshot.current_revision(self.engine)
            if force or rev != self.snapshot.revision:
                named = None if force else self.snapshot.named_changes(rev)
                if named is None or not await self.snapshot.load_some(self.engine, rev, *named):
                    await self.snapshot.load(self.engine)
            self.snapshot.confirm()
        self._heartbeat(rev)

    def _heartbeat(self, rev: int) -> None:
        now = time.monotonic()
        if self.bus is None or now - self._beat_at < self.heartbeat_seconds or (self._beat and not self._beat.done()):
            return
        self._beat_at = now
        self._beat = asyncio.get_running_loop().create_task(self._send_beat(rev))

    async def _send_beat(self, rev: int) -> None:
        assert self.bus is not None
        with contextlib.suppress(Exception):  # the publisher logs bus trouble; a lost beat is harmless
            await asyncio.wait_for(self.bus.publish(Event(revision=rev, kind="heartbeat", origin=self.origin)), 2)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):  # not wait_for: on 3.11 it can swallow a cancellation
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with asyncio.timeout(self.timeout):  # not wait_for (see _run's first lines)
                    await self.refresh()
                if self._failing:
                    log.info("snapshot refresh works again")
                self._failing = False
            except Exception as e:  # the store may be unreachable; keep serving the last snapshot
                if not self._failing:  # one line per state change, not one per poll
                    log.warning("snapshot refresh failed (%s); serving the previous snapshot", type(e).__name__)
                self._failing = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="snapshot-refresher")

    async def stop(self) -> None:
        for task in (self._task, self._beat):
            await cancel_and_wait(task)
