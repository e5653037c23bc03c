"""Everything a request handler needs, built once at start-up by create_app (no import-time globals)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyplane.bus.base import Bus
from keyplane.bus.publish import Publisher
from keyplane.clock import Clock
from keyplane.config import Settings
from keyplane.control.base import write_clock
from keyplane.features import Features
from keyplane.last_used import LastUsedRecorder
from keyplane.pipeline import Pipeline
from keyplane.snapshot import Snapshot
from keyplane.snapshot_refresh import SnapshotRefresher


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    snapshot: Snapshot
    refresher: SnapshotRefresher
    last_used: LastUsedRecorder
    read_engine: AsyncEngine
    read_sessions: async_sessionmaker[AsyncSession]
    # The invalidation bus (keyplane.bus) and the publisher the sessions above publish commits on; None
    # when a runtime is built without them (the snapshot then learns of changes by polling only).
    bus: Bus | None = None
    publisher: Publisher | None = None
    # The request flow's steps (keyplane.pipeline), assembled by the app once the features have started.
    pipeline: Pipeline = field(default_factory=Pipeline)
    # What the features started offer each other (keyplane.features), each set by its owner at start-up.
    features: Features = field(default_factory=Features)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction; after it commits, the change is on the bus (sessions publish every commit
        that bumped the revision, whoever opened them) and this instance's snapshot is refreshed."""
        async with self.sessions() as s, s.begin():
            with write_clock(self.clock.now):  # the writes take their time from this runtime's clock
                yield s
        await self.refresher.refresh()
        if self.publisher is not None:
            await self.publisher.drain()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only: on SQLite it never takes the write lock."""
        async with self.read_sessions() as s:
            yield s


def heartbeat_seconds(max_staleness: float) -> float:
    """How often an instance that reads the store publishes its revision on the bus: several beats fit in
    the staleness bound, so that one lost beat does not stop the instances that rely on them."""
    return min(1.0, max_staleness / 4) if max_staleness > 0 else 1.0
