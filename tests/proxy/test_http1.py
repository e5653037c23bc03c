"""keyplane's HTTP/1.1 upstream client (proxy/http1.py) against raw socket servers written here: what it sends,
how it reads every answer shape, and that each failure is the aiohttp type proxy/forward.py's retry rules read."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from keyplane.proxy import http1, http1_answer
from keyplane.proxy.forward import _received
from keyplane.proxy.upstream import RETRYABLE_ERRORS

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def _read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await r.readexactly(length)


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def _loop(request: pytest.FixtureRequest) -> object:
    """Every test on both event loops keyplane runs on (uvloop's transports are not asyncio's classes)."""
    global _LOOP
    _LOOP = request.param
    return request.param


_LOOP = "asyncio"


def _run(coro: Awaitable[None]) -> None:
    if _LOOP == "uvloop":
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


def _answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(e + b"\r\n" for e in extra),
        body,
    )


def test_sends_one_request_per_connection_turn_and_reuses_it() -> None:
    seen: list[tuple[bytes, bytes]] = []
    connections = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await _read_request(r)
            except asyncio.IncompleteReadError:
                return
            seen.append((head, body))
            w.write(_answer(b'{"ok":%d}' % len(seen), b"Content-Type: application/json; charset=utf-8"))

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        for i in range(3):
            resp = await c.request(
                o, b"POST /v1/chat/completions HTTP/1.1\r\nx-a: b", b'{"n":%d}' % i, connect_timeout=1, read_timeout=5
            )
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.read() == b'{"ok":%d}' % (i + 1)
        await c.aclose()
        srv.close()

    _run(main())
    assert connections == 1
    head, body = seen[2]
    assert body == b'{"n":2}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"x-a: b" in lines
    assert f"Host: 127.0.0.1:{0}".encode()[:15] in head  # Host carries the port (not the default one)
    assert b"Content-Length: 7" in lines


def test_chunked_gzip_answer_arrives_as_it_is_sent() -> None:
    release = asyncio.Event
    packed = gzip.compress(b"data: one\n\n" + b"data: two\n\n")
    half = len(packed) // 2

    async def main() -> None:
        go = release()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n")
            w.write(b"Content-Type: text/event-stream\r\n\r\n")
            w.write(b"%x\r\n%s\r\n" % (half, packed[:half]))
            await w.drain()
            await go.wait()
            w.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed) - half, packed[half:]))
            await w.drain()

        srv, port = await _serve(handler)
        c = http1.Client()
        resp = await c.request(
            c.origin("http", "127.0.0.1", port), b"POST /s HTTP/1.1", b"{}", connect_timeout=1, read_timeout=5
        )
        assert resp.content_type == "text/event-stream"
        got = b""
        it = resp.chunks().__aiter__()
        while not got:  # the first half decodes to some bytes before the server sends the rest
            got += await it.__anext__()
        assert b"data: one".startswith(got[:9]) or got.startswith(b"data: o")
        go.set()
        async for more in it:
            got += more
        assert got == b"data: one\n\ndata: two\n\n"
        await c.aclose()
        srv.close()

    _run(main())


def test_deflate_and_an_answer_ended_by_its_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + zlib.compress(b"x" * 5000))
        await w.drain()
        w.close()

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        resp = await c.request(o, b"GET /v1/files HTTP/1.1", b"", connect_timeout=1, read_timeout=5)
        assert await resp.read() == b"x" * 5000
        assert c.open == 0 and not o.idle  # never kept: its end was the connection's
        await c.aclose()
        srv.close()

    _run(main())


def test_interim_answers_are_skipped() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + _answer(b"done"))

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        resp = await c.request(
            c.origin("http", "127.0.0.1", port), b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=5
        )
        assert resp.status == 200 and await resp.read() == b"done"
        await c.aclose()
        srv.close()

    _run(main())


def _failure(handler: Handler, read_timeout: float = 5) -> BaseException:
    caught: list[BaseException] = []

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        try:
            resp = await c.request(
                c.origin("http", "127.0.0.1", port),
                b"POST / HTTP/1.1",
                b"{}",
                connect_timeout=1,
                read_timeout=read_timeout,
            )
            await resp.read()
        except BaseException as e:
            caught.append(e)
        await c.aclose()
        srv.close()

    _run(main())
    assert caught, "the request did not fail"
    return caught[0]


def test_failures_are_the_types_the_retry_rules_read() -> None:
    async def closes(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.close()

    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await w.drain()
        w.close()

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(b"SMTP ready\r\n\r\n")

    async def brotli(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(_answer(b"??", b"Content-Encoding: br"))

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        await asyncio.sleep(5)

    gone = _failure(closes)
    assert isinstance(gone, aiohttp.ServerDisconnectedError) and isinstance(gone, RETRYABLE_ERRORS)
    assert not _received(gone, answered=False)  # a stale keep-alive connection: sent again
    payload = _failure(cut)
    assert isinstance(payload, aiohttp.ClientPayloadError) and isinstance(payload, RETRYABLE_ERRORS)
    for bad in (_failure(garbage), _failure(brotli)):
        assert isinstance(bad, http1_answer.InvalidAnswer) and isinstance(bad, aiohttp.ClientResponseError)
        assert _received(bad, answered=False)  # it answered: the provider has the request
        assert "SMTP" not in str(bad) or "valid HTTP" in str(bad)
    slow = _failure(silent, read_timeout=0.05)
    assert isinstance(slow, aiohttp.SocketTimeoutError) and isinstance(slow, TimeoutError)
    assert _received(slow, answered=False)  # a read timeout: it was working on it


def test_a_refused_connection_is_a_connector_error() -> None:
    async def main() -> None:
        srv, port = await _serve(lambda r, w: asyncio.sleep(0))
        srv.close()
        await srv.wait_closed()
        c = http1.Client()
        with pytest.raises(aiohttp.ClientConnectorError) as e:
            await c.request(
                c.origin("http", "127.0.0.1", port), b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=1
            )
        assert f"127.0.0.1:{port}" in str(e.value) and c.open == 0
        await c.aclose()

    _run(main())


def test_a_large_answer_pauses_the_socket_until_read() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(_answer(big))
        await w.drain()

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        resp = await c.request(
            c.origin("http", "127.0.0.1", port), b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=5
        )
        for _ in range(50):
            await asyncio.sleep(0.01)
            if resp._conn is not None and resp._conn.paused:
                break
        assert resp._conn is not None and resp._conn.paused  # buffered past the mark: reading stopped
        assert http1_answer.HIGH_WATER < resp._size < len(big)
        assert await resp.read() == big
        await c.aclose()
        srv.close()

    _run(main())


def test_closing_a_running_answer_drops_the_connection() -> None:
    eof = asyncio.Event

    async def main() -> None:
        saw_eof = eof()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await w.drain()
            await r.read()  # returns at EOF: the client hung up
            saw_eof.set()

        srv, port = await _serve(handler)
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        resp = await c.request(o, b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=5)
        it = resp.chunks().__aiter__()
        assert await it.__anext__() == b"hello"
        resp.close()
        await asyncio.wait_for(saw_eof.wait(), 5)
        assert c.open == 0 and not o.idle
        await c.aclose()
        srv.close()

    _run(main())


def test_the_connection_limit_waits_and_evicts_idle_connections_of_other_origins() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(r)
            except asyncio.IncompleteReadError:
                return
            await asyncio.sleep(0.01)
            w.write(_answer(b"ok"))

    async def main() -> None:
        a, pa = await _serve(handler)
        b, pb = await _serve(handler)
        c = http1.Client(limit=1)
        oa, ob = c.origin("http", "127.0.0.1", pa), c.origin("http", "127.0.0.1", pb)

        async def one(o: http1.Origin) -> bytes:
            resp = await c.request(o, b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=5)
            return await resp.read()

        assert await asyncio.gather(*(one(oa) for _ in range(4))) == [b"ok"] * 4
        assert c.open == 1 and len(oa.idle) == 1
        assert await one(ob) == b"ok"  # A's idle connection made room
        assert c.open == 1 and not oa.idle and len(ob.idle) == 1
        await c.aclose()
        a.close()
        b.close()

    _run(main())


def test_bytes_after_an_answer_retire_the_connection() -> None:
    """An upstream that writes a second answer (or any bytes) after the one asked for: the next request never reads
    them as its own answer; it goes out on a new connection."""
    connections = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        n = connections
        while True:
            try:
                await _read_request(r)
            except asyncio.IncompleteReadError:
                return
            w.write(_answer(b"mine %d" % n) + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")  # a stray head
            await w.drain()

    async def main() -> None:
        srv, port = await _serve(handler)
        c = http1.Client()
        o = c.origin("http", "127.0.0.1", port)
        got = []
        for _ in range(2):
            resp = await c.request(o, b"POST / HTTP/1.1", b"", connect_timeout=1, read_timeout=5)
            got.append(await resp.read())
        assert got == [b"mine 1", b"mine 2"]
        await c.aclose()
        srv.close()

    _run(main())
    assert connections == 2


def test_a_compressed_answer_is_cut_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip answer that decodes to more than MAX_DECODED fails (ClientPayloadError) without being decoded whole."""
    monkeypatch.setattr(http1_answer, "MAX_DECODED", 1024 * 1024)
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros, ~8 KiB on the wire

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(_answer(bomb, b"Content-Encoding: gzip"))
        await w.drain()

    err = _failure(handler)
    assert isinstance(err, aiohttp.ClientPayloadError) and "decodes to more than" in str(err)
