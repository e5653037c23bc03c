"""Everything a request handler needs, built once at start-up by create_app (no import-time globals)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyplane.clock import Clock
from keyplane.config import Settings
from keyplane.snapshot import LastUsedRecorder, Snapshot, SnapshotRefresher


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
    # Filled by the features that own them (proxy, limits, usage, guard) at start-up.
    extras: dict[str, Any] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction; the snapshot of this instance is refreshed right after it commits."""
        async with self.sessions() as s, s.begin():
            yield s
        await self.refresher.refresh()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only: on SQLite it never takes the write lock."""
        async with self.read_sessions() as s:
            yield s
