"""The floor for a Python proxy hop (bench/compare.py): a raw ASGI app that forwards POST bodies to the
upstream with one pooled aiohttp session and no logic at all. Not keyplane: a yardstick for it.

The same stack keyplane serves on (uvicorn + uvloop + httptools, aiohttp client, the project's
virtualenv), so the difference between the two is keyplane's own work. BENCH_UPSTREAM is the
upstream's base URL (default http://127.0.0.1:18080).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

UP = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18080")
Message = MutableMapping[str, Any]
session: aiohttp.ClientSession | None = None


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    global session
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if session is not None:
                    await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), auto_decompress=False
        )
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    async with session.post(
        UP + scope["path"], data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer sk-up"}
    ) as r:
        data = await r.read()
        await send(
            {"type": "http.response.start", "status": r.status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": data})
