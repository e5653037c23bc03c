"""keyplane.http_protocol: an answer's header block leaves in the same write as its body, or at the end of the loop's
turn when no body follows in it (a stream's first event may be far off); nothing else is held or reordered. The whole
suite serves on this protocol (tests/support.py, as `keyplane serve` does); these tests pin the transport's
behaviour write by write, and one answer end to end through a real socket."""

from __future__ import annotations

import asyncio
import socket

import pytest

from keyplane import http_protocol
from keyplane.http_protocol import HeldHeaders
from tests.support import RunningServer

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


def _held() -> tuple[HeldHeaders, Recording]:
    raw = Recording()
    return HeldHeaders(raw, asyncio.get_running_loop()), raw  # type: ignore[arg-type]


async def test_a_header_block_and_the_body_after_it_go_out_in_one_write() -> None:
    t, raw = _held()
    t.write(HEAD)
    assert raw.writes == [] and t.get_write_buffer_size() == len(HEAD)
    t.write(b"{}")
    assert raw.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the end of the turn finds nothing held
    assert raw.writes == [HEAD + b"{}"]


async def test_a_header_block_alone_goes_out_at_the_end_of_the_turn() -> None:
    t, raw = _held()
    t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")  # a stream: its first event comes later
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    t.write(b"5\r\nhello\r\n")  # later writes go out as they come
    assert raw.writes[-1] == b"5\r\nhello\r\n"


async def test_other_writes_are_neither_held_nor_reordered() -> None:
    t, raw = _held()
    t.write(b"a")
    t.write(memoryview(b"b"))
    t.write(HEAD)
    t.write(bytearray(b"c"))
    assert raw.writes == [b"a", b"b", HEAD + b"c"]


async def test_closing_sends_what_is_held_first_and_aborting_drops_it() -> None:
    t, raw = _held()
    t.write(HEAD)
    t.close()
    assert raw.writes == [HEAD] and raw.closing
    t2, raw2 = _held()
    t2.write(HEAD)
    t2.abort()
    await asyncio.sleep(0)
    assert raw2.writes == [] and raw2.aborted


async def test_a_connection_closed_before_the_end_of_the_turn_is_not_written_to() -> None:
    t, raw = _held()
    t.write(HEAD)
    raw.closing = True  # the peer went away: the transport is closing under the protocol
    await asyncio.sleep(0)
    assert raw.writes == []


def test_everything_else_is_the_transports_own() -> None:
    raw = Recording()
    t = HeldHeaders(raw, asyncio.new_event_loop())  # type: ignore[arg-type]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert t.is_closing() is False


def test_keyplane_serves_on_it() -> None:
    assert http_protocol.protocol() is http_protocol.KeyplaneHttpToolsProtocol


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_real_answer_arrives_whole_over_a_socket(gw: RunningServer, method: str) -> None:
    """Key info (answered by keyplane itself) over a raw socket: status line, headers and body intact, the
    connection kept alive for a second request (HEAD: the header block alone, sent at the end of the turn)."""
    host, port = gw.base_url.removeprefix("http://").split(":")
    request = f"{method} /v1/keyplane/key HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.api_key}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for _ in range(2):
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 ")
            length = int(
                next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
            )
            if method == "GET":
                while len(body) < length:
                    body += s.recv(65536)
                assert len(body) == length and body.startswith(b"{")
            else:
                assert body == b""
