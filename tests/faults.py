"""A TCP proxy the tests put between keyplane and PostgreSQL or Redis, to cut them on demand.

    proxy = FaultProxy(5432)           # relays 127.0.0.1:<proxy.port> -> 127.0.0.1:5432
    proxy.refuse()                     # connections refused (nothing listens), open ones reset
    proxy.blackhole()                  # connections accepted and held, no byte relayed either way
    proxy.restore()                    # relays again (what was held is reset, as after a real partition)

It runs its own event loop in a thread, so a test drives it from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")
        self._thread.start()
        self._call(self._listen())

    def url_for(self, url: str) -> str:
        """``url`` (postgresql://user@host:port/db or redis://host:port/n) pointed at this proxy."""
        scheme, rest = url.split("://", 1)
        userinfo, _, hostpart = rest.rpartition("@")
        _, _, path = hostpart.partition("/")
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{path}"

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _reset_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                if self.mode != "pass":
                    continue  # black-holed: read and dropped
                w.write(data)
                await w.drain()
        with contextlib.suppress(Exception):
            w.close()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._writers.add(cw)
        while self.mode == "blackhole":  # accepted, never answered
            await asyncio.sleep(0.05)
            if cw.is_closing():
                return
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.transport.abort()
            return
        self._writers.add(uw)
        await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))

    def refuse(self) -> None:
        async def go() -> None:
            self.mode = "refuse"
            if self._server is not None:
                self._server.close()
                self._server = None
            await self._reset_all()

        self._call(go())

    def blackhole(self) -> None:
        async def go() -> None:
            self.mode = "blackhole"

        self._call(go())

    def restore(self) -> None:
        async def go() -> None:
            await self._reset_all()
            self.mode = "pass"
            if self._server is None:
                await self._listen()

        self._call(go())

    def close(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
            await self._reset_all()

        with contextlib.suppress(Exception):
            self._call(go())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
