"""keyplane's own pooled HTTP/1.1 client for the request path: a body held whole out, the answer in.

Why not aiohttp's client here: on the 2-core benchmark machine a request through ``ClientSession.request``
costs more CPU than everything else a proxied request does, keyplane's checks included (docs/benchmarks.md:
the bare aiohttp proxy serves ~4,000 req/s, the same proxy on this client ~12,000). This module is the
smallest client that does the one job: keep-alive connections per origin (``asyncio`` transports, TLS by
the standard ``ssl`` module), the answer parsed by ``httptools`` (llhttp, the parser uvicorn serves on),
gzip/deflate decoded, the answer's body handed on as it arrives with back-pressure. Everything it does not
do (a streamed multipart upload, HEAD, a target it does not accept, model lists) stays on aiohttp
(proxy/upstream.py chooses). The answer a connection reads is proxy/http1_answer.py's :class:`Response`.

Its failures are aiohttp's exception types (or subclasses of them), so retries, breakers and "did the
provider receive it" (proxy/forward.py) read them as before:

- no connection: :class:`ConnectFailed` (a ``ClientConnectorError``) or ``ConnectionTimeoutError``;
- the connection closed before the answer: ``ServerDisconnectedError``;
- no byte for ``read_timeout`` seconds: ``SocketTimeoutError``;
- an answer that is not HTTP: ``http1_answer.InvalidAnswer`` (a ``ClientResponseError``);
- a body cut short: ``ClientPayloadError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from typing import Final, cast

import aiohttp
import httptools

from keyplane.proxy.http1_answer import InvalidAnswer, Response

MAX_HEADER_BYTES: Final = 64 * 1024  # the bytes an answer's head may take to arrive (interim answers included)
MAX_HEADERS: Final = 256  # header lines in one answer
ACCEPT_ENCODING: Final = b"gzip, deflate"  # what aiohttp asks for (it has no brotli here either)


class ConnectFailed(aiohttp.ClientConnectorError):
    """The upstream's address refused or could not be reached (nothing was sent)."""

    def __init__(self, origin: str, cause: OSError) -> None:
        OSError.__init__(self, cause.errno, f"cannot connect to {origin}: {cause.strerror or cause}")
        self._text = f"cannot connect to {origin}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self._text


class Origin:
    """One upstream origin (scheme, host, port) and its idle keep-alive connections."""

    __slots__ = ("host", "host_header", "idle", "name", "port", "ssl")

    def __init__(self, scheme: str, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.name = f"{scheme}://{host}:{port}"
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        self.host_header = (shown if port == default else f"{shown}:{port}").encode("idna")
        self.idle: list[_Conn] = []


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    __slots__ = (
        "client",
        "closed",
        "header_bytes",
        "headers",
        "headers_waiter",
        "idle_since",
        "origin",
        "parser",
        "paused",
        "read_timeout",
        "resp",
        "transport",
        "until_close",
    )

    def __init__(self, client: Client, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.headers_waiter: asyncio.Future[Response] | None = None
        self.resp: Response | None = None
        self.read_timeout: float | None = None
        self.until_close = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.headers_waiter is None and self.resp is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted with the next request
            return
        waiting = self.headers_waiter is not None  # the head of the answer is still coming
        if waiting:
            self.header_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if waiting and self.headers_waiter is not None and self.header_bytes > MAX_HEADER_BYTES:
                raise httptools.HttpParserError("header block too large")  # one header that never ends
        except httptools.HttpParserUpgrade:
            self._error(InvalidAnswer("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._error(InvalidAnswer(f"the upstream's answer is not valid HTTP/1.1 ({e})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        resp = self.resp
        if resp is not None and self.until_close and exc is None:
            self.resp = None
            resp._finish()  # an answer without a length ends when its connection does
        elif resp is not None:
            self.resp = None
            resp._fail(aiohttp.ClientPayloadError("the upstream closed the connection in the middle of the answer"))
        w = self.headers_waiter
        if w is not None and not w.done():
            w.set_exception(aiohttp.ServerDisconnectedError("the upstream closed the connection before answering"))

    # --- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.headers_waiter is None:  # an answer nobody asked for (bytes after the last one): never reused
            raise httptools.HttpParserError("an answer to no request")
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            raise httptools.HttpParserError("too many headers")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        w = self.headers_waiter
        if w is None or w.done():
            return
        self.headers_waiter = None
        self.until_close = status not in (204, 304)
        for k, _ in self.headers:
            if k == b"content-length" or k == b"transfer-encoding":
                self.until_close = False  # its end is known: its length, or its last chunk
                break
        try:
            resp = Response(self, status, self.headers, self.read_timeout)
        except InvalidAnswer as e:
            w.set_exception(e)
            self.abort()
            return
        self.resp = resp
        w.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return
        resp, self.resp = self.resp, None
        keep = self.parser.should_keep_alive() and not self.until_close
        if resp is not None:
            resp._finish()
        if keep and not self.closed:
            self.resume()
            self.client._release(self)
        else:
            self.abort()

    # --- the client's side ----------------------------------------------------------------------

    def _error(self, exc: BaseException) -> None:
        w, self.headers_waiter = self.headers_waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)
        resp, self.resp = self.resp, None
        if resp is not None:
            resp._fail(exc)
        self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.client._forget(self)


def _no_room(w: asyncio.Future[None], origin: Origin) -> None:
    if not w.done():
        w.set_exception(aiohttp.ConnectionTimeoutError(f"no connection to {origin.name} was free within its timeout"))


def _expire(w: asyncio.Future[Response]) -> None:
    if not w.done():
        w.set_exception(aiohttp.SocketTimeoutError("the upstream did not answer within its read timeout"))


class Client:
    """Pooled keep-alive connections to any number of origins, ``limit`` open at most (aiohttp's default)."""

    def __init__(self, *, limit: int = 512, keepalive: float = 30.0) -> None:
        self.limit = limit
        self.keepalive = keepalive
        self.open = 0
        self._members: set[_Conn] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._origins: dict[tuple[str, str, int], Origin] = {}

    def origin(self, scheme: str, host: str, port: int) -> Origin:
        """The origin's pool (one per scheme, host and port, shared by every deployment on it)."""
        known = self._origins.get((scheme, host, port))
        if known is not None:
            return known
        ctx = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        o = self._origins[(scheme, host, port)] = Origin(scheme, host, port, ctx)
        return o

    async def request(
        self,
        origin: Origin,
        head: bytes,
        body: bytes,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Response:
        """Sends ``head`` (the request line and headers, no Host, no Content-Length, no final blank line)
        and ``body``; returns once the answer's status and headers are in."""
        conn = self._idle(origin) or await self._acquire(origin, connect_timeout)
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        w: asyncio.Future[Response] = loop.create_future()
        conn.headers_waiter = w
        conn.header_bytes = 0
        conn.read_timeout = read_timeout
        conn.transport.write(
            b"%s\r\nHost: %s\r\nContent-Length: %d\r\nAccept-Encoding: %s\r\n\r\n%s"
            % (head, origin.host_header, len(body), ACCEPT_ENCODING, body)
        )
        timer = None if read_timeout is None else loop.call_later(read_timeout, _expire, w)
        try:
            return await w
        except BaseException:
            conn.abort()  # cancelled or failed mid-exchange: the connection's state is unknown
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _idle(self, origin: Origin) -> _Conn | None:
        """The most recently used idle connection to ``origin`` still fit to use (the others are closed)."""
        idle = origin.idle
        if not idle or self._closed:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.abort()
        return None

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> _Conn:
        """A connection to ``origin``: an idle one, a new one, or the first room the pool makes, within
        ``connect_timeout`` (as aiohttp's ``connect`` timeout bounds its wait for a pooled connection)."""
        loop = asyncio.get_running_loop()
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        while True:
            if self._closed:
                raise aiohttp.ClientConnectionError("the upstream client is closed")
            conn = self._idle(origin)
            if conn is not None:
                return conn
            if self.open < self.limit or self._evict():
                break
            w = loop.create_future()
            self._waiters.append(w)
            timer = None if deadline is None else loop.call_later(max(0.0, deadline - loop.time()), _no_room, w, origin)
            try:
                await w
            except asyncio.CancelledError:
                if w.done() and not w.cancelled():
                    self._wake()  # woken, then cancelled: the room it was told of goes to the next waiter
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(w)
        self.open += 1
        conn = _Conn(self, origin)
        self._members.add(conn)
        try:
            connect = loop.create_connection(
                lambda: conn,
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.host if origin.ssl else None,
            )
            if deadline is None:
                await connect
            else:
                await asyncio.wait_for(connect, max(0.001, deadline - loop.time()))
        except TimeoutError:
            conn.abort()
            raise aiohttp.ConnectionTimeoutError(f"connecting to {origin.name} timed out") from None
        except OSError as e:
            conn.abort()
            raise ConnectFailed(origin.name, e) from None
        except BaseException:
            conn.abort()
            raise
        return conn

    def _evict(self) -> bool:
        """Closes the longest-idle connection of any origin to make room; False when none is idle."""
        oldest: _Conn | None = None
        for origin in self._origins.values():
            if origin.idle and (oldest is None or origin.idle[0].idle_since < oldest.idle_since):
                oldest = origin.idle[0]
        if oldest is None:
            return False
        oldest.abort()
        return True

    def _release(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        conn.origin.idle.append(conn)
        self._wake()

    def _forget(self, conn: _Conn) -> None:
        if conn in self._members:
            self._members.discard(conn)
            self.open -= 1
            with contextlib.suppress(ValueError):
                conn.origin.idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._members):
            conn.abort()
        self._wake()
