"""The Redis bus: pub/sub on ``<redis_prefix>:bus``, with a subscriber that reconnects on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from keyplane.bus.base import Subscribers
from keyplane.bus.events import Event, decode, encode
from keyplane.periodic import backoff, cancel_and_wait

log = logging.getLogger("keyplane.bus")


class RedisBus(Subscribers):
    """Redis pub/sub on ``<redis_prefix>:bus``; the subscriber reconnects on its own."""

    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self.channel = f"{prefix}:bus"
        self._redis: Any = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._sub: Any = aioredis.from_url(url, socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="bus-redis")

    async def publish(self, event: Event) -> None:
        await self._redis.publish(self.channel, encode(event))

    async def _listen(self) -> None:
        retries, failing = 0, False
        while True:
            try:
                async with self._sub.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(self.channel)
                    self.subscribed.set()
                    if failing:
                        log.info("bus: Redis subscription restored")
                    retries, failing = 0, False
                    while True:
                        msg = await ps.get_message(timeout=1.0)
                        if msg is not None and msg.get("type") == "message":
                            ev = decode(msg["data"])
                            if ev is not None:
                                self.deliver(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.subscribed.clear()
                if not failing:  # one line per state change, not one per retry
                    log.warning("bus: Redis subscription lost (%s); retrying, polling meanwhile", type(e).__name__)
                failing = True
                await asyncio.sleep(backoff(retries, 0.5, 5.0))  # 0.5 s, doubled per retry, at most 5 s
                retries += 1

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for client in (self._redis, self._sub):
            with contextlib.suppress(Exception):
                await client.aclose()
