"""The HTTP/1.1 protocol keyplane serves on: uvicorn's httptools protocol, with a response's header block sent in
the same write as its body.

uvicorn writes a response's status line and headers (``http.response.start``) and its body
(``http.response.body``) with two ``transport.write`` calls, and uvloop sends each at once: two ``send()``
system calls and two TCP segments per answer, and a client woken twice. keyplane answers a JSON request with its
headers and its whole body back to back, so the header block is held, on the connection's transport, until the
next write (the body: one ``send()``) or the end of the event loop's current turn, whichever comes first: a
stream's headers still leave as soon as they are sent (its first event may be far off), a HEAD answer's or an
interim ``100 Continue``'s at the end of the turn. Nothing else changes: every other write goes out as it comes,
in order; closing the connection sends what is held first; aborting it drops it, as an abort drops the
transport's own buffer. A WebSocket upgrade hands the connection over without the wrapper (the WebSocket
protocol writes frames of its own).

About 10 us of CPU less per answer on the 2-core benchmark machine (one system call, and the loopback's
delivery of one segment, fewer), and the client's wake-up for the lone header segment (docs/benchmarks.md).
Without httptools (uvicorn's pure-Python h11 protocol), :func:`protocol` returns ``"auto"`` and nothing of this
applies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("keyplane.serving")

_STATUS_LINE = b"HTTP/1.1 "  # how every header block uvicorn writes starts (its STATUS_LINE table)


class HeldHeaders:
    """A connection's transport, holding a header block until the next write or the end of the loop's turn.
    Everything else is the transport's own (``__getattr__``)."""

    __slots__ = ("_held", "_loop", "raw")

    def __init__(self, raw: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = raw
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.raw.write(held + data)
        elif data[:9] == _STATUS_LINE:  # a header block: its body (if any) is usually the next write
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self.raw.write(data)

    def flush(self) -> None:
        """Send what is held (at the end of the turn that held it, or before closing)."""
        held = self._held
        if held is None:
            return
        self._held = None
        if self.raw.is_closing():
            return  # the connection is gone or going: nothing more is sent on it
        try:
            self.raw.write(held)
        except Exception:  # the transport refused it (closed under us): the client is gone
            log.debug("a held header block could not be written", exc_info=True)

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def abort(self) -> None:
        self._held = None
        self.raw.abort()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + (len(self._held) if self._held is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn serves on h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if HttpToolsProtocol is not None:

    class KeyplaneHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol whose answers go out with their header block and body in one write (a class
        at module level: uvicorn's workers receive their configuration pickled)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(HeldHeaders(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

        def handle_websocket_upgrade(self) -> None:
            transport = self.transport
            if isinstance(transport, HeldHeaders):  # the WebSocket protocol gets the connection itself
                transport.flush()
                self.transport = transport.raw
            super().handle_websocket_upgrade()


def protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: :class:`KeyplaneHttpToolsProtocol`, or ``"auto"`` without httptools."""
    if HttpToolsProtocol is None:
        return "auto"
    return KeyplaneHttpToolsProtocol
