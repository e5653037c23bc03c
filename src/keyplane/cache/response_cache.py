"""The exact response cache: an identical, deterministic, non-streaming request answered from memory or Redis.

Opt-in (docs/caching.md): a project or key listed in ``[cache]``, or a request sending
``x-keyplane-cache: use``; ``x-keyplane-cache: bypass`` skips it. Only requests whose answer cannot
vary are cached: ``temperature: 0`` or a ``seed`` (embeddings always); never a stream. The key is a
hash of the namespace, the endpoint and the body bytes; the namespace is the project, or the
organization for the projects in ``org_wide_projects`` (which share it with each other only).

A hit is admitted like any request (it counts against the request rate), then settled as free: its
prompt is recorded as cached tokens, nothing is generated, the cost is 0 (see ``__init__`` for how
billing is told). The response carries ``x-keyplane-cache: hit``, ``miss`` or ``bypass``.
Expiry follows the injected clock, so tests move time instead of sleeping; Redis also expires the
keys itself (PX) so that nothing lingers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from keyplane.cache.config import CacheSection
from keyplane.clock import Clock

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.cache")

HEADER: Final = b"x-keyplane-cache"
HIT: Final = (HEADER, b"hit")
MISS: Final = (HEADER, b"miss")
BYPASS: Final = (HEADER, b"bypass")
CACHEABLE: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
ALWAYS_DETERMINISTIC: Final = frozenset({"/v1/embeddings"})
# Response headers not stored: recomputed for each answer, or about the request that filled the cache.
_NOT_STORED: Final = frozenset(
    {b"content-length", b"x-request-id", b"x-keyplane-request-id", b"openai-processing-ms", HEADER}
)


# Request headers that never change an answer (besides those never forwarded): left out of the cache key.
_KEY_NEUTRAL_EXTRA: Final = frozenset({b"user-agent", b"accept", b"traceparent", b"tracestate", HEADER})


def _key_neutral() -> frozenset[bytes]:
    from keyplane.proxy.upstream import DROP_REQUEST  # not at import time: keyplane.proxy imports this package

    return DROP_REQUEST | _KEY_NEUTRAL_EXTRA


class Entry(msgspec.Struct, array_like=True):
    expires_at: float
    headers: list[tuple[bytes, bytes]]
    body: bytes
    prompt_tokens: int
    completion_tokens: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


class _Knobs(msgspec.Struct):
    temperature: float | None = None
    seed: int | None = None
    stream: bool | None = None


_knobs = msgspec.json.Decoder(_Knobs)


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """In-process LRU, bounded by entries and bytes (expiry is checked on read, by the caller's clock)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, bytes] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        if len(value) > self.max_bytes:
            return
        self._data[key] = value
        self.bytes += len(value)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            _, v = self._data.popitem(last=False)
            self.bytes -= len(v)

    def __len__(self) -> int:
        return len(self._data)

    async def aclose(self) -> None:
        self._data.clear()
        self.bytes = 0


class RedisStore:
    """Shared by every keyplane instance of a fleet; Redis' own maxmemory policy bounds it."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.redis: Any = aioredis.from_url(url, decode_responses=False, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = f"{prefix}:rc:"

    async def get(self, key: str) -> bytes | None:
        v: bytes | None = await self.redis.get(self.prefix + key)
        return v

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.redis.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))

    async def aclose(self) -> None:
        await self.redis.aclose()


def _names(values: list[str]) -> frozenset[str]:
    return frozenset(v.strip() for v in values if v.strip())


class ResponseCache:
    def __init__(
        self,
        section: CacheSection,
        ttl: float,
        store: Store,
        clock: Clock,
        rt: Runtime,
        on_result: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.store = store
        self.clock = clock
        self.rt = rt
        self._neutral = _key_neutral()
        self.max_entry_bytes = section.max_entry_bytes
        self.projects = _names(section.projects)
        self.all_projects = "*" in self.projects
        self.keys = _names(section.keys)
        self.org_wide = _names(section.org_wide_projects)
        self.on_result = on_result or (lambda ctx, result: None)
        self._last_error = 0.0

    # --- policy ---------------------------------------------------------------------------------

    def _listed(self, names: frozenset[str], project_id: str | None) -> bool:
        if not names or project_id is None:
            return False
        if project_id in names:
            return True
        p = self.rt.snapshot.projects.get(project_id)
        return p is not None and p.name in names

    def namespace(self, ctx: RequestContext, asked: bytes | None) -> str | None:
        """The cache namespace of this request, or None when the cache does not apply to it."""
        pid = ctx.project_id
        if self._listed(self.org_wide, pid):
            return f"o:{self.rt.snapshot.org_id}"
        opted = asked == b"use" or self.all_projects or ctx.key.id in self.keys or self._listed(self.projects, pid)
        if not opted:
            return None
        return f"p:{pid}" if pid else f"k:{ctx.key.id}"

    @staticmethod
    def cacheable(ctx: RequestContext) -> bool:
        if ctx.stream or ctx.method != "POST" or ctx.endpoint not in CACHEABLE:
            return False
        try:
            k = _knobs.decode(ctx.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if k.stream:
            return False
        return ctx.endpoint in ALWAYS_DETERMINISTIC or k.temperature == 0 or k.seed is not None

    # --- the request path -------------------------------------------------------------------------

    async def serve(
        self, ctx: RequestContext, headers: list[tuple[bytes, bytes]], send: Any, finish: Callable[[], Awaitable[None]]
    ) -> Any:
        """Answer ``ctx`` from the cache and return None, or return the ``send`` to use (which fills it)."""
        try:
            found = await self._lookup(ctx, headers)
        except Exception:  # a bug here must not fail a request the upstream can answer
            log.exception("response cache: lookup failed for %s", ctx.request_id)
            return send
        if found is None:
            return send
        key, entry = found
        if entry is not None:
            await self._answer(ctx, entry, send, finish)
            return None
        ctx.cache = "miss"
        ctx.extra_headers.append(MISS)
        self.on_result(ctx, "miss")
        return self._filling(ctx, key, send)

    async def _lookup(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> tuple[str, Entry | None] | None:
        """(key, entry found or None), or None when the cache does not apply to this request."""
        asked = None
        for k, v in headers:
            if k == HEADER:
                asked = v.strip().lower()
                break
        ns = self.namespace(ctx, asked)
        if ns is None:
            return None
        if asked == b"bypass" or not self.cacheable(ctx):
            ctx.cache = "bypass"
            ctx.extra_headers.append(BYPASS)
            self.on_result(ctx, "bypass")
            return None
        # Everything forwarded that can change the answer is in the key: the query string and every
        # forwarded header but the few that cannot (SDK telemetry, tracing, the client's agent).
        neutral = self._neutral
        varying = sorted((k, v) for k, v in headers if k not in neutral and not k.startswith(b"x-stainless-"))
        h = hashlib.blake2b(b"%s\0%s\0%s\0" % (ns.encode(), ctx.endpoint.encode(), ctx.query), digest_size=20)
        for k, v in varying:
            h.update(b"%s:%s\0" % (k, v))
        h.update(ctx.body)
        key = h.hexdigest()
        return key, await self._get(key)

    async def _get(self, key: str) -> Entry | None:
        try:
            raw = await self.store.get(key)
        except Exception as e:  # the cache is an optimisation: never fail a request for it
            self._store_error("read", e)
            return None
        if raw is None:
            return None
        try:
            entry = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return entry if entry.expires_at > self.clock.now() else None

    async def _answer(
        self, ctx: RequestContext, entry: Entry, send: Any, finish: Callable[[], Awaitable[None]]
    ) -> None:
        ctx.cache = "hit"  # billing charges nothing for it (billing/settle.py)
        # Recorded in usage as cached input tokens, no output, served by keyplane itself.
        ctx.prompt_tokens = ctx.cached_tokens = entry.prompt_tokens
        ctx.completion_tokens = 0
        ctx.upstream = "keyplane-cache"
        ctx.status = 200
        ctx.attempts = 0
        ctx.extra_headers.append(HIT)
        self.on_result(ctx, "hit")
        await finish()
        h = list(entry.headers)
        h.append((b"content-length", b"%d" % len(entry.body)))
        own = ctx.request_id.encode()
        h.append((b"x-request-id", own))
        h.append((b"x-keyplane-request-id", own))
        h.append((b"openai-processing-ms", b"%d" % int((time.perf_counter() - ctx.started) * 1000)))
        h.extend(ctx.extra_headers)
        await send({"type": "http.response.start", "status": 200, "headers": h})
        await send({"type": "http.response.body", "body": entry.body})

    def _filling(self, ctx: RequestContext, key: str, send: Any) -> Any:
        """``send``, also keeping a copy of a 200 answer to store once it is sent."""
        status = 0
        kept: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []
        size = 0
        limit = self.max_entry_bytes
        extra = set(ctx.extra_headers)

        async def filling(msg: dict[str, Any]) -> None:
            nonlocal status, size
            # The entry's age counts from when the answer was complete, not from when sending it
            # returned (the client may already have it all and moved on by then).
            now = self.clock.now()
            await send(msg)
            if msg["type"] == "http.response.start":
                status = msg["status"]
                kept.extend(
                    (k, v)
                    for k, v in msg.get("headers", ())
                    if k not in _NOT_STORED and (k, v) not in extra and not k.startswith(b"x-ratelimit-")
                )
                return
            if status != 200 or msg["type"] != "http.response.body":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size <= limit:
                parts.append(body)
            if not msg.get("more_body", False) and size <= limit and ctx.error is None and not ctx.usage_estimated:
                await self._put(
                    key, Entry(now + self.ttl, kept, b"".join(parts), ctx.prompt_tokens, ctx.completion_tokens)
                )

        return filling

    async def _put(self, key: str, entry: Entry) -> None:
        try:
            await self.store.set(key, _encode(entry), self.ttl)
        except Exception as e:
            self._store_error("write", e)

    def _store_error(self, what: str, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error > 60:  # one line a minute, not one per request
            self._last_error = now
            log.warning("response cache: %s failed (%s: %s); requests go upstream", what, type(e).__name__, e)

    async def aclose(self) -> None:
        await self.store.aclose()
