"""An upstream answer read by keyplane's HTTP/1.1 client (proxy/http1.py): status and headers at once, the body
as it arrives, gzip/deflate decoded, reading from the socket paused while more than :data:`HIGH_WATER` bytes wait
for the proxy (back-pressure), ``read_timeout`` between parts. It implements proxy/upstream.UpstreamResponse.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Final, Protocol

import aiohttp

HIGH_WATER: Final = 256 * 1024  # answer bytes buffered before reading from the socket pauses
MAX_DECODED: Final = 256 * 1024 * 1024  # the most a compressed answer may decode to (a gzip bomb is cut)


class Source(Protocol):
    """The connection an answer arrives on (http1._Conn)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...


class InvalidAnswer(aiohttp.ClientResponseError):
    """The upstream answered something that is not a valid HTTP/1.1 answer (it did answer)."""

    def __init__(self, text: str) -> None:
        Exception.__init__(self, text)
        self.message = text
        self.status = 0
        self.headers = None
        self.history = ()

    def __str__(self) -> str:
        return self.message


class Response:
    """An upstream answer: status and headers at once, the body as it arrives (proxy/upstream.UpstreamResponse)."""

    __slots__ = (
        "_conn",
        "_decoded",
        "_decoder",
        "_exc",
        "_parts",
        "_size",
        "_waiter",
        "done",
        "headers",
        "read_timeout",
        "status",
    )

    def __init__(self, conn: Source, status: int, headers: list[tuple[bytes, bytes]], read_timeout: float | None):
        self._conn: Source | None = conn
        self.status = status
        self.headers = headers
        self.read_timeout = read_timeout
        self._parts: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self.done = False
        self._decoder: zlib._Decompress | None = None
        self._decoded = 0  # bytes the decoder made
        for k, v in headers:
            if k == b"content-encoding":
                enc = v.strip().lower()
                if enc in (b"gzip", b"x-gzip"):
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif enc == b"deflate":
                    self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
                elif enc and enc != b"identity":
                    raise InvalidAnswer(f"the answer's content-encoding {enc!r} was not asked for")

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters (aiohttp's ``content_type``, same default)."""
        for k, v in self.headers:
            if k == b"content-type":
                return v.split(b";", 1)[0].strip().lower().decode("latin-1")
        return "application/octet-stream"

    # --- fed by the connection ------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:  # never more than the cap, whatever one compressed chunk expands to
                data = self._decoder.decompress(data, MAX_DECODED - self._decoded + 1)
            except zlib.error:
                self._fail(aiohttp.ClientPayloadError("the answer's compressed body is corrupt"))
                return
            self._decoded += len(data)
            if self._decoded > MAX_DECODED:
                self._fail(
                    aiohttp.ClientPayloadError(
                        f"the answer's compressed body decodes to more than {MAX_DECODED // (1024 * 1024)} MiB"
                    )
                )
                return
            if not data:
                return
        self._parts.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            with contextlib.suppress(zlib.error):
                tail = self._decoder.flush()
                if tail:
                    self._parts.append(tail)
        self.done = True
        self._conn = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.done:
            self._exc = exc
            self.done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abort()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- read by the proxy ----------------------------------------------------------------------

    async def _more(self) -> bool:
        """Waits for a part or the end; False at the end. Raises the connection's failure."""
        while not self._parts:
            if self.done:
                if self._exc is not None:
                    raise self._exc
                return False
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = None if self.read_timeout is None else loop.call_later(self.read_timeout, self._timed_out)
            try:
                await self._waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return True

    def _timed_out(self) -> None:
        self._fail(aiohttp.SocketTimeoutError("the upstream sent nothing within its read timeout"))

    def _take(self) -> bytes:
        data = self._parts.popleft() if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        parts: list[bytes] = []
        try:
            while await self._more():
                parts.append(self._take())
        except BaseException:
            self.close()
            raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while await self._more():
                yield self._take()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drops the connection if the answer is still coming: the upstream sees the cancel and stops."""
        if not self.done:
            self.done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abort()
        self._parts.clear()
