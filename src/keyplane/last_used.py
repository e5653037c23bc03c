"""When each API key was last used: collected on the request path in memory, written in one batch per
interval (``last_used_flush_seconds``), off the request path."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.periodic import Periodic
from keyplane.store.models import ApiKey


class LastUsedRecorder:
    """Collects the keys used since the last flush and writes last_used_at in one batch."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self.engine = engine
        self.pending: dict[str, int] = {}
        self._periodic = Periodic("last-used-flusher", self.flush, interval)

    def touch(self, key_id: str, now: float) -> None:
        self.pending[key_id] = int(now)

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        by_time: dict[int, list[str]] = {}
        for kid, t in batch.items():
            by_time.setdefault(t, []).append(kid)
        try:
            async with self.engine.begin() as conn:
                for t, ids in by_time.items():
                    await conn.execute(update(ApiKey).where(ApiKey.id.in_(ids)).values(last_used_at=t))
        except BaseException:  # the store is away: keep them for the next flush (the newer time wins)
            for kid, t in batch.items():
                if self.pending.get(kid, 0) < t:
                    self.pending[kid] = t
            raise

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop(final_step=True)
