"""Test support for the kill switch: a real HTTP receiver for alerts, a tiny SMTP server, a runtime."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from keyplane import control
from keyplane.clock import Clock
from keyplane.config import Settings
from keyplane.last_used import LastUsedRecorder
from keyplane.proxy.context import RequestContext
from keyplane.runtime import Runtime
from keyplane.snapshot import Snapshot
from keyplane.snapshot_refresh import SnapshotRefresher
from keyplane.store import db
from tests.support import make_settings


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


class _ThreadLoop:
    """An event loop in a thread: the receivers serve tests of any kind (sync or async)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Receiver:
    """An aiohttp.web server on 127.0.0.1 (port 0) that records every POST; may fail the first N."""

    fail_next: int = 0
    fail_status: int = 500
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _tl: _ThreadLoop | None = None
    _runner: Any = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=self.fail_status, text="try later")
        with self._cond:
            self.received.append(Received(request.path, dict(request.headers), body))
            self._cond.notify_all()
        return web.Response(status=202 if request.path.startswith("/pd") else 200, text="ok")

    def start(self) -> Receiver:
        self._tl = _ThreadLoop()

        async def go() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"

        self._tl.run(go())
        return self

    def stop(self) -> None:
        if self._tl is not None:
            self._tl.run(self._runner.cleanup())
            self._tl.close()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= n, timeout)
        return list(self.received)


class SMTPReceiver:
    """Just enough SMTP (RFC 5321, no TLS, no auth) to receive keyplane's alert emails."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.port = 0
        self._tl: _ThreadLoop | None = None
        self._server: asyncio.AbstractServer | None = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, rcpts = "", []
        writer.write(b"220 test ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.decode().strip()
            up = cmd.upper()
            if up.startswith(("EHLO", "HELO")):
                writer.write(b"250 test\r\n")
            elif up.startswith("MAIL FROM:"):
                sender = cmd[10:].strip("<> ")
                writer.write(b"250 ok\r\n")
            elif up.startswith("RCPT TO:"):
                rcpts.append(cmd[8:].strip("<> "))
                writer.write(b"250 ok\r\n")
            elif up == "DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                data = b""
                while True:
                    chunk = await reader.readline()
                    if chunk in (b".\r\n", b".\n", b""):
                        break
                    data += chunk
                self.messages.append((sender, rcpts, data))
                writer.write(b"250 queued\r\n")
            elif up == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    def start(self) -> SMTPReceiver:
        self._tl = _ThreadLoop()

        async def go() -> None:
            self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._tl.run(go())
        return self

    def stop(self) -> None:
        if self._tl is not None and self._server is not None:
            server = self._server

            async def close() -> None:  # on the server's own loop: asyncio servers are not thread-safe
                server.close()
                await server.wait_closed()

            self._tl.run(close())
            self._tl.close()


GUARD_ONLY = """
[guard]
defaults = false
"""


def guard_settings(tmp: Path, database_url: str, config: str, **env: str) -> Settings:
    return make_settings(tmp / "home", database_url, config_text=config, **env)


async def make_runtime(settings: Settings, clock: Clock, *, init: bool = True) -> tuple[Runtime, dict[str, Any]]:
    """A runtime as app.startup builds it (store, snapshot), without the proxy: for driving settle directly."""
    engine = db.make_engine(settings.database_url)
    await db.migrate(engine)
    out: dict[str, Any] = {}
    if init:
        async with db.sessionmaker(engine)() as s, s.begin():
            out = await control.init_org(s, settings.secret_key, "Test org", "owner@example.com")
    snapshot = Snapshot()
    refresher = SnapshotRefresher(snapshot, engine, settings.snapshot_poll_seconds)
    await refresher.refresh(force=True)
    rt = Runtime(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=db.sessionmaker(engine),
        snapshot=snapshot,
        refresher=refresher,
        last_used=LastUsedRecorder(engine, 60),
        read_engine=db.reader(engine),
        read_sessions=db.sessionmaker(db.reader(engine)),
    )
    return rt, out


async def new_key(rt: Runtime, project_id: str, name: str = "app") -> str:
    async with rt.write() as s:
        row, _ = await control.create_project_key(
            s, control.CLI_ACTOR, rt.settings.secret_key, project_id, name=name, owner_user_id=None
        )
    return row.id


def ctx_for(
    rt: Runtime,
    key_id: str,
    *,
    tokens: int = 0,
    status: int = 200,
    cost_micros: int = 0,
    upstream: str | None = "demo",
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> RequestContext:
    entry = rt.snapshot.keys_by_id[key_id]
    return RequestContext(
        request_id="req_test",
        key=entry,
        project_id=entry.project_id,
        endpoint="/v1/chat/completions",
        model="demo-echo",
        upstream=upstream,
        status=status,
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        cost_micros=cost_micros,
        client_ip=client_ip,
        user_agent=user_agent,
    )
