"""The floor for a Python proxy hop (bench/compare.py): a raw ASGI app that forwards POST bodies to the
upstream with one pooled aiohttp session and no logic at all. Not keyplane: a yardstick for it.

The same stack keyplane serves on (uvicorn + uvloop + httptools, aiohttp client, the project's
virtualenv), so the difference between the two is keyplane's own work. BENCH_UPSTREAM is the
upstream's base URL (default http://127.0.0.1:18080).

BENCH_CLIENT=http1 forwards with keyplane's own upstream client (keyplane/proxy/http1.py) instead of
aiohttp's: the same no-logic hop on the client keyplane forwards with, so that compare.py can show how much
of keyplane's figure is the client and how much its checks (the issue's floors stay against aiohttp's).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

UP = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18080")
CLIENT = os.environ.get("BENCH_CLIENT", "aiohttp")
Message = MutableMapping[str, Any]
session: aiohttp.ClientSession | None = None
fast: Any = None  # (http1.Client, its origin) with BENCH_CLIENT=http1


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
    if CLIENT == "http1":
        await _http1(scope, receive, send)
        return
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), auto_decompress=False
        )
    body = await _body(receive)
    async with session.post(
        UP + scope["path"], data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer sk-up"}
    ) as r:
        data = await r.read()
        await send(
            {"type": "http.response.start", "status": r.status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": data})


async def _http1(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    global fast
    if fast is None:
        from yarl import URL

        from keyplane.proxy import http1

        u = URL(UP)
        client = http1.Client()
        fast = (client, client.origin(u.scheme, u.host or "", u.port or 80))
    body = await _body(receive)
    head = b"POST %s HTTP/1.1\r\ncontent-type: application/json\r\nauthorization: Bearer sk-up" % scope["path"].encode()
    r = await fast[0].request(fast[1], head, body, connect_timeout=5, read_timeout=600)
    data = await r.read()
    await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def _body(receive: Callable[[], Awaitable[Message]]) -> bytes:
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    return body
