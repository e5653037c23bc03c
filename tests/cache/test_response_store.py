"""The response cache's stores and policy, without a server: bounds, and an unreachable Redis."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from keyplane.cache.response_cache import MemoryStore, RedisStore, ResponseCache
from keyplane.clock import FakeClock
from keyplane.config import CacheSection


async def test_memory_store_is_bounded_by_entries_and_bytes():
    s = MemoryStore(max_entries=3, max_bytes=10)
    for k in "abcd":
        await s.set(k, b"xx", 60)
    assert len(s) == 3 and await s.get("a") is None
    await s.get("b")  # b is now the most recently used
    await s.set("e", b"xxxxxx", 60)  # 2 + 2 + 6 = 10 bytes: c goes, b stays
    assert await s.get("c") is None and await s.get("b") == b"xx" and s.bytes <= 10
    await s.set("big", b"x" * 11, 60)  # larger than the whole store: not kept
    assert await s.get("big") is None


def _ctx():
    key = SimpleNamespace(id="key_1")
    return SimpleNamespace(
        project_id="proj_1",
        key=key,
        stream=False,
        method="POST",
        endpoint="/v1/chat/completions",
        body=b'{"model":"m","temperature":0,"messages":[]}',
        state={},
        extra_headers=[],
        request_id="req_1",
        started=0.0,
        error=None,
        usage_estimated=False,
        query=b"",
        cache=None,
        prompt_tokens=3,
        completion_tokens=1,
    )


async def test_an_unreachable_redis_is_a_miss_not_an_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "kp")
    rt = SimpleNamespace(snapshot=SimpleNamespace(projects={}, org_id="org"))
    cache = ResponseCache(CacheSection(projects=["*"]), 60, store, FakeClock(), rt)
    sent = []

    async def send(msg):
        sent.append(msg)

    async def finish():
        raise AssertionError("not a hit")

    ctx = _ctx()
    out = await cache.serve(ctx, [], send, finish)
    assert out is not None and ctx.cache == "miss"
    await out({"type": "http.response.start", "status": 200, "headers": []})
    await out({"type": "http.response.body", "body": b"{}"})  # the failed write is skipped too
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    await cache.aclose()
