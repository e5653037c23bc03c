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
        "_wire_done",
        "_zin",
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
        self._zin = b""  # compressed bytes not decoded yet (decoded a step at a time: _inflate)
        self._wire_done = False  # the whole answer is off the wire (its decoding may not be)
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
        if self._decoder is None:
            self._parts.append(data)
            self._size += len(data)
        else:
            self._zin = self._zin + data if self._zin else data
            self._inflate()
            if self.done:
                return
        if (self._size > HIGH_WATER or self._zin) and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _inflate(self) -> None:
        """Decodes the compressed bytes waiting, a step of HIGH_WATER at a time, until HIGH_WATER bytes wait for
        the proxy: however much a socket read expands to, no more of it is in memory at once (a gzip bomb is
        paused, then cut at MAX_DECODED)."""
        d = self._decoder
        assert d is not None
        while self._zin and self._size <= HIGH_WATER:
            try:
                out = d.decompress(self._zin, HIGH_WATER)
            except zlib.error:
                self._fail(aiohttp.ClientPayloadError("the answer's compressed body is corrupt"))
                return
            self._zin = d.unconsumed_tail
            if out:
                self._decoded += len(out)
                if self._decoded > MAX_DECODED:
                    self._fail(
                        aiohttp.ClientPayloadError(
                            f"the answer's compressed body decodes to more than {MAX_DECODED // (1024 * 1024)} MiB"
                        )
                    )
                    return
                self._parts.append(out)
                self._size += len(out)
        if not self._zin and self._wire_done and not self.done:
            self._end()

    def _finish(self) -> None:
        """The whole answer is off the wire (the connection is free again)."""
        self._wire_done = True
        self._conn = None
        if not self._zin:
            self._end()
        self._wake()

    def _end(self) -> None:
        if self._decoder is not None:
            with contextlib.suppress(zlib.error):
                tail = self._decoder.flush()
                if tail:
                    self._parts.append(tail)
                    self._size += len(tail)
        self.done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._zin = b""
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
        if self._zin:
            self._inflate()  # the next step of a paused compressed answer
        if self._conn is not None and not self._zin:
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
        self._zin = b""
        if not self.done:
            self.done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abort()
        self._parts.clear()
