"""The upstream client: keyplane's own pooled HTTP/1.1 client (proxy/http1.py) for a body held whole,
one aiohttp ClientSession with a pooled TCPConnector for the rest (HEAD, a target http1 does not accept,
model lists), opened at start-up.

A multipart upload streamed as it arrives (proxy/uploads.py) goes out on a connection of its own instead
(a second session that never keeps one): it cannot be sent twice, so it must not meet a pooled keep-alive
connection the upstream closed while it sat idle (a stale connection fails the first write, which a body
held whole survives by being sent again, proxy/forward.py).

:meth:`UpstreamClient.request` sends one attempt and returns an :class:`UpstreamResponse` (status,
raw headers, body as a whole or as chunks); retries and fallback live in :mod:`keyplane.proxy.forward`.
The built-in ``demo`` upstream answers through the same interface without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from yarl import URL

from keyplane.proxy import demo, http1
from keyplane.proxy.router import Deployment

if TYPE_CHECKING:
    from keyplane.proxy.uploads import Upload

# Request headers never forwarded: hop-by-hop, our own credentials and ids, what aiohttp sets itself.
# x-request-id: some upstreams (vLLM) echo it back, and keyplane adopts the upstream's id as the
# request's id (usage records are unique by it), so a client must not be able to choose it.
DROP_REQUEST = frozenset(
    {
        b"host",
        b"authorization",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
        b"openai-organization",
        b"openai-project",
        b"accept-encoding",
        b"cookie",
        b"expect",
        b"trailer",
        b"api-key",
        b"x-api-key",
        b"x-request-id",
        b"x-keyplane-cache",
        # Method overrides: some frameworks (and proxies) serve a POST as the method these name, which
        # would let a request be authorized as one method and run as another.
        b"x-http-method-override",
        b"x-method-override",
        b"x-http-method",
        # Client-asserted forwarding and rewrite headers: a proxy in front of the upstream could route or
        # trust by them (x-original-url rewrites the path on some servers).
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-prefix",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-real-ip",
        b"x-envoy-original-path",
    }
)

# Errors of one attempt that say nothing about the request itself: try again or elsewhere.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,  # an answer that is not valid HTTP (the request went out: see forward._received)
)


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-cased

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class _HTTPResponse:
    __slots__ = ("_r", "headers", "status")

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self._r = r
        self.status = r.status
        self.headers = [(k.lower(), v) for k, v in r.raw_headers]

    @property
    def content_type(self) -> str:
        """Parsed when asked (streams, pass-through, object paths): a JSON answer read whole never asks."""
        return self._r.content_type

    async def read(self) -> bytes:
        try:
            return await self._r.read()
        finally:
            self._r.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._r.content.iter_any():
            yield chunk
        self._r.release()

    def close(self) -> None:
        # Closing (not releasing) drops the connection: the upstream sees the cancel and stops generating.
        self._r.close()


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        trust_env=False,
        skip_auto_headers=("User-Agent",),
    )


def forward_headers(headers: list[tuple[bytes, bytes]], dep: Deployment) -> list[tuple[str, str]]:
    """The client's headers (names lower-case, as the ASGI server gives them) less the hop-by-hop and
    credential ones, then the deployment's key and its configured ``headers``. A client header of a configured
    name is dropped, whatever its case: those are the operator's (an Azure `api-version`, a gateway's virtual
    key or tenant header), and a server reading the first value would take the client's."""
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in _kept(headers, dep)]
    if dep.api_key:
        out.append(("Authorization", "Bearer " + dep.api_key))
    out.extend(dep.config.headers.items())
    return out


def _dropped(dep: Deployment) -> frozenset[bytes]:
    """The client header names that never go upstream (:func:`forward_headers`' rule, for both clients): the
    hop-by-hop and credential ones, and the deployment's configured ones, whatever their case."""
    configured = dep.config.headers
    if configured:
        return DROP_REQUEST | {k.lower().encode("latin-1") for k in configured}
    return DROP_REQUEST


def _kept(headers: list[tuple[bytes, bytes]], dep: Deployment) -> list[tuple[bytes, bytes]]:
    """The client's headers that go upstream."""
    drop = _dropped(dep)
    return [(k, v) for k, v in headers if k not in drop]


_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff#]")  # a request target sent as is: printable ASCII only


def header_block(headers: list[tuple[bytes, bytes]], dep: Deployment) -> bytes:
    """:func:`forward_headers` as the lines of an HTTP/1.1 head ("name: value\\r\\n" each), for proxy/http1.py."""
    drop = _dropped(dep)  # _kept's rule, in the one pass that writes the lines
    lines = [k + b": " + v + b"\r\n" for k, v in headers if k not in drop]
    if dep.api_key:
        lines.append(b"Authorization: Bearer " + dep.api_key.encode("latin-1") + b"\r\n")
    for k, v in dep.config.headers.items():
        lines.append(k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n")
    return b"".join(lines)


class _Target:
    """Where a deployment's requests go on http1: its origin's pool and the path its base URL starts with."""

    __slots__ = ("base", "config", "origin")

    def __init__(self, config: object, origin: http1.Origin | None, base: str) -> None:
        self.config = config
        self.origin = origin  # None: not an origin http1 serves (aiohttp does)
        self.base = base


class UpstreamClient:
    def __init__(self, *, limit: int = 512) -> None:
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None
        self.fresh: aiohttp.ClientSession | None = None  # streamed uploads: a new connection each
        self.http1: http1.Client | None = None
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        self._targets: dict[str, _Target] = {}

    async def start(self) -> None:
        pooled = aiohttp.TCPConnector(
            limit=self.limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30, force_close=False
        )
        self.session = _session(pooled)
        self.fresh = _session(aiohttp.TCPConnector(limit=self.limit, ttl_dns_cache=300, force_close=True))
        self.http1 = http1.Client(limit=self.limit, keepalive=30.0)

    async def aclose(self) -> None:
        if self.http1 is not None:
            await self.http1.aclose()
            self.http1 = None
        for s in (self.session, self.fresh):
            if s is not None:
                await s.close()
        self.session = self.fresh = None

    def _target(self, dep: Deployment) -> _Target:
        t = self._targets.get(dep.name)
        if t is None or t.config is not dep.config:
            assert self.http1 is not None
            u = URL(dep.config.base_url)
            ok = u.scheme in ("http", "https") and u.host is not None and u.port is not None and not u.user
            ok = ok and not u.query_string and not u.fragment
            origin = self.http1.origin(u.scheme, u.host or "", u.port or 0) if ok else None
            t = self._targets[dep.name] = _Target(dep.config, origin, u.raw_path.rstrip("/"))
        return t

    def _url(self, dep: Deployment, path_qs: str) -> URL:
        k = (dep.name, path_qs)
        u = self._urls.get(k)
        if u is None:
            # /v1/chat/completions -> <base_url>/chat/completions; base_url carries its own /v1 (or not).
            u = URL(dep.config.base_url.rstrip("/") + path_qs[3:], encoded=True)
            if len(self._urls) < 4096:
                self._urls[k] = u
        return u

    def _timeout(self, dep: Deployment) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(dep.name)
        if t is None:
            c = dep.config
            t = aiohttp.ClientTimeout(
                total=None, connect=c.connect_timeout, sock_connect=c.connect_timeout, sock_read=c.read_timeout
            )
            self._timeouts[dep.name] = t
        return t

    def request(
        self, dep: Deployment, method: str, path_qs: str, headers: list[tuple[bytes, bytes]], body: bytes | Upload
    ) -> Awaitable[UpstreamResponse]:
        """One attempt. A body held whole goes by http1, whose own coroutine is returned (one frame less on each
        resumption of the request's await chain); the rest by :meth:`_request`."""
        if isinstance(body, bytes) and method != "HEAD" and self.http1 is not None and not dep.is_demo:
            fast = self._http1(dep, method, path_qs, headers, body)
            if fast is not None:
                return fast
        return self._request(dep, method, path_qs, headers, body)

    def _http1(
        self, dep: Deployment, method: str, path_qs: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Awaitable[UpstreamResponse] | None:
        """The attempt on http1, or None when its target or head is not one to send as is."""
        assert self.http1 is not None
        t = self._target(dep)
        if t.origin is None:
            return None
        path = t.base + path_qs[3:]
        target = path.encode("latin-1", "replace")
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode("latin-1"), target, header_block(headers, dep))
        # One line per header, each ended by CRLF, no other CR or LF anywhere (no header, target or method can
        # split the request); a target outside printable ASCII goes by aiohttp, which quotes it.
        lines = head.count(b"\r\n")
        if (
            not path.isascii()
            or not method.isalpha()
            or _UNSAFE_TARGET.search(target) is not None
            or head.count(b"\n") != lines
            or head.count(b"\r") != lines
        ):
            return None
        c = dep.config
        return self.http1.request(
            t.origin, head[:-2], body, connect_timeout=c.connect_timeout, read_timeout=c.read_timeout
        )

    async def _request(
        self, dep: Deployment, method: str, path_qs: str, headers: list[tuple[bytes, bytes]], body: bytes | Upload
    ) -> UpstreamResponse:
        """One attempt by aiohttp (a streamed upload, HEAD, a target http1 does not send) or the demo upstream."""
        if dep.is_demo:
            return demo.answer(method, path_qs, body if isinstance(body, bytes) else await body.read_all())
        assert self.session is not None and self.fresh is not None, "UpstreamClient.start() was not called"
        h = forward_headers(headers, dep)
        data: Any = body if body else None
        session = self.session
        if not isinstance(body, bytes):  # a multipart upload streamed as it arrives (proxy/uploads.py)
            data = body.iterate()
            if body.length is not None:
                h.append(("Content-Length", str(body.length)))
            if body.streaming:  # sent once only: never on a pooled connection that may have gone stale
                session = self.fresh
        r = await session.request(
            method,
            self._url(dep, path_qs),
            data=data,
            headers=h,
            timeout=self._timeout(dep),
            allow_redirects=False,
            compress=None,
        )
        return _HTTPResponse(r)

    async def get_json(self, dep: Deployment, path: str, wait: float = 5.0) -> Any:
        """A small GET off the request path (model lists); None when it fails."""
        if dep.is_demo:
            d = demo.answer("GET", path, b"")
            return demo.loads(await d.read()) if d.status == 200 else None
        if self.session is None:
            return None
        h = {"Authorization": "Bearer " + dep.api_key} if dep.api_key else {}
        h.update(dep.config.headers)
        with contextlib.suppress(Exception):
            async with self.session.get(
                self._url(dep, path), headers=h, timeout=aiohttp.ClientTimeout(total=wait)
            ) as r:
                if r.status == 200:
                    return await r.json(content_type=None)
        return None
