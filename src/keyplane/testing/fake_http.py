"""The fake upstream's HTTP/1.1 connection (raw asyncio + httptools): each request parsed, recorded and handed
to :meth:`FakeUpstream.answer <keyplane.testing.fake_upstream.FakeUpstream.answer>`, its answer written (JSON,
or a chunked event stream with the faults a Behaviour sets)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httptools
import orjson

if TYPE_CHECKING:
    from keyplane.testing.fake_upstream import Behaviour, FakeUpstream

CT_JSON = b"application/json"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float = 0.0
    finished: bool = False  # the whole answer was written
    disconnected: bool = False  # the client went away before the answer was complete

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class HttpRequest:
    method: str = ""
    url: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True


def head(status: int, ctype: bytes, length: int | None, extra: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 %d X" % status, b"content-type: " + ctype]
    lines.append(b"content-length: %d" % length if length is not None else b"transfer-encoding: chunked")
    lines.extend(k + b": " + v for k, v in extra)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Conn(asyncio.Protocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.req = HttpRequest()
        self.busy: asyncio.Task[None] | None = None
        self.current: Recorded | None = None
        self.closed = False
        self.head_only = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fake.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.current is not None and not self.current.finished:
            self.current.disconnected = True
        if self.busy is not None:
            self.busy.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.req = HttpRequest()

    def on_url(self, url: bytes) -> None:
        self.req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.req.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.req.body += body

    def on_message_complete(self) -> None:
        req = self.req
        req.method = self.parser.get_method().decode()
        req.keep_alive = self.parser.should_keep_alive()
        fake = self.fake
        if fake.fixed and req.method == "POST":  # benchmark fast path: no parsing, no task
            self.transport.write(fake._fixed_response)
            return
        rec = None
        if fake.record:
            rec = Recorded(
                req.method, req.url.decode(), dict(req.headers), bytes(req.body), asyncio.get_running_loop().time()
            )
            fake.requests.append(rec)
        self.current = rec
        prev = self.busy

        async def run() -> None:
            if prev is not None and not prev.done():
                await asyncio.wait({prev})
            self.head_only = req.method == "HEAD"  # an answer to HEAD is its status and headers only (RFC 9110)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await fake.answer(self, req, rec)
            self.head_only = False
            if not req.keep_alive and not self.closed:
                self.transport.close()

        self.busy = asyncio.get_running_loop().create_task(run())

    # writing
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.head_only:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return  # a body piece
            data = data[: end + 4]
        self.transport.write(data)

    def write_json(self, status: int, obj: Any) -> None:
        body = orjson.dumps(obj)
        self.write(head(status, CT_JSON, len(body), []) + body)

    async def write_stream(self, events: list[bytes], extra: list[tuple[bytes, bytes]], b: Behaviour) -> bool:
        """True when the whole stream was written."""
        self.write(head(200, b"text/event-stream; charset=utf-8", None, extra))
        for i, ev in enumerate(events):
            if b.die_after is not None and i >= b.die_after:
                self.transport.close()  # no terminating chunk: the client sees a broken stream
                return False
            if b.chunk_delay and i:
                await asyncio.sleep(b.chunk_delay)
            if self.closed:
                return False
            self.write(b"%x\r\n%s\r\n" % (len(ev), ev))
        self.write(b"0\r\n\r\n")
        return True
