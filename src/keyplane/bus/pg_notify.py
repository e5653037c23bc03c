"""The PostgreSQL bus: LISTEN/NOTIFY on a PostgreSQL store without Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from keyplane.bus.base import Subscribers
from keyplane.bus.events import Event, decode, encode
from keyplane.periodic import backoff, cancel_and_wait

log = logging.getLogger("keyplane.bus")

PG_PAYLOAD_MAX = 7900  # NOTIFY payloads are limited to 8000 bytes


def asyncpg_dsn(database_url: str) -> str:
    """postgresql+asyncpg://... -> postgresql://... (asyncpg's own form)."""
    return "postgresql://" + database_url.split("://", 1)[1]


class PgNotifyBus(Subscribers):
    """PostgreSQL LISTEN/NOTIFY on a PostgreSQL store without Redis."""

    name = "postgres"

    def __init__(self, database_url: str, channel: str = "keyplane_bus") -> None:
        super().__init__()
        self.dsn = asyncpg_dsn(database_url)
        self.channel = channel
        self._listener: Any = None
        self._sender: Any = None
        self._task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="bus-postgres")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        ev = decode(payload)
        if ev is not None:
            self.deliver(ev)

    async def _listen(self) -> None:
        import asyncpg

        retries, failing = 0, False
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    await conn.add_listener(self.channel, self._on_notify)
                    self.subscribed.set()
                    if failing:
                        log.info("bus: PostgreSQL LISTEN restored")
                    retries, failing = 0, False
                    while not conn.is_closed():
                        await asyncio.sleep(1.0)
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)  # notices a dead connection
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        conn.terminate()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    log.warning("bus: PostgreSQL LISTEN lost (%s); retrying, polling meanwhile", type(e).__name__)
                failing = True
                await asyncio.sleep(backoff(retries, 0.5, 5.0))  # 0.5 s, doubled per retry, at most 5 s
                retries += 1

    async def publish(self, event: Event) -> None:
        import asyncpg

        payload = encode(event)
        if len(payload) > PG_PAYLOAD_MAX:  # too big for NOTIFY: receivers reload instead
            payload = encode(Event(revision=event.revision, first=event.first, origin=event.origin))
        async with self._send_lock:
            if self._sender is None or self._sender.is_closed():
                self._sender = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await asyncio.wait_for(
                    self._sender.execute("SELECT pg_notify($1, $2)", self.channel, payload.decode()), 5
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    self._sender.terminate()
                self._sender = None
                raise

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender.close(), 2)
