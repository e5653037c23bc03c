"""A fake OpenAI Realtime upstream (WebSocket), for the tests of keyplane's realtime relay.

Speaks enough of the realtime event protocol: ``session.created`` on connect, ``session.update`` ->
``session.updated``, ``response.create`` -> ``response.created`` then ``response.done`` with a usage
(text/audio input, cached and output tokens; output capped at the request's ``max_output_tokens``).
``input_audio_buffer.commit`` -> a response unasked (as server VAD does); a ``response.create`` with
``metadata.fake_error`` -> an ``error`` event naming its ``event_id``.
``hold = True`` keeps each response open (``response.created`` only) until ``release()`` (or, with
``honour_cancel``, a ``response.cancel``). Every event received is recorded (``fake.events``), with
the Authorization header of each connection (``fake.auth``).

    with FakeRealtime() as fake:
        base_url = fake.base_url  # http://127.0.0.1:PORT/v1 (an [[upstreams]] base_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve


@dataclass
class Usage:
    """What each response.done reports (cached tokens are part of their modality's input)."""

    text_in: int = 40
    audio_in: int = 60
    cached_text: int = 20
    cached_audio: int = 0
    image_in: int = 0
    text_out: int = 10
    audio_out: int = 30
    details: bool = True  # False: only the totals, no input/output token details


@dataclass
class FakeRealtime:
    usage: Usage = field(default_factory=Usage)
    hold: bool = False
    honour_cancel: bool = False  # response.cancel ends this connection's held responses (with their usage)
    events: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Server | None = None
    _thread: threading.Thread | None = None
    _held: list[tuple[ServerConnection, str, int]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeRealtime:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                self._server = await serve(self._handle, "127.0.0.1", 0)
                self.port = next(iter(self._server.sockets)).getsockname()[1]
                ready.set()
                await self._server.serve_forever()

            try:
                loop.run_until_complete(main())
            except asyncio.CancelledError:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-realtime")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeRealtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release(self) -> None:
        """Finish the held responses (``response.done`` with usage)."""
        assert self._loop is not None
        held, self._held = self._held, []
        for ws, rid, limit in held:
            asyncio.run_coroutine_threadsafe(self._done(ws, rid, limit), self._loop).result(5)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    # --- the protocol ----------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        req = ws.request
        self.auth.append(req.headers.get("Authorization") if req is not None else None)
        self.paths.append(req.path if req is not None else "")
        n = next(self._ids)
        await ws.send(
            orjson.dumps(
                {
                    "type": "session.created",
                    "event_id": f"event_{n}_0",
                    "session": {
                        "id": f"sess_{n}",
                        "object": "realtime.session",
                        "type": "realtime",
                        "model": "gpt-realtime",
                    },
                }
            ).decode()
        )
        session_limit: object = None
        async for raw in ws:
            try:
                ev = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            self.events.append(ev)
            kind = ev.get("type")
            if kind == "session.update":
                session_limit = (ev.get("session") or {}).get("max_output_tokens", session_limit)
                await ws.send(
                    orjson.dumps(
                        {"type": "session.updated", "event_id": "event_u", "session": ev.get("session") or {}}
                    ).decode()
                )
            elif kind == "response.create" and ((ev.get("response") or {}).get("metadata") or {}).get("fake_error"):
                await ws.send(
                    orjson.dumps(
                        {
                            "type": "error",
                            "event_id": "event_err",
                            "error": {
                                "type": "invalid_request_error",
                                "code": "invalid_value",
                                "message": "refused by the fake",
                                "param": None,
                                "event_id": ev.get("event_id"),
                            },
                        }
                    ).decode()
                )
            elif kind == "response.create":
                await self._respond(ws, n, (ev.get("response") or {}).get("max_output_tokens", session_limit))
            elif kind == "response.cancel" and self.honour_cancel:  # held responses end, cancelled
                mine = [h for h in self._held if h[0] is ws]
                self._held = [h for h in self._held if h[0] is not ws]
                for _, rid, out in mine:
                    await self._done(ws, rid, out, "cancelled")
            elif kind == "input_audio_buffer.commit":  # server VAD: a response the client did not ask for
                await self._respond(ws, n, session_limit)

    async def _respond(self, ws: ServerConnection, n: int, limit: object) -> None:
        rid = f"resp_{n}_{next(self._ids)}"
        await ws.send(
            orjson.dumps(
                {
                    "type": "response.created",
                    "event_id": f"event_{rid}_c",
                    "response": {"id": rid, "object": "realtime.response", "status": "in_progress"},
                }
            ).decode()
        )
        out = limit if isinstance(limit, int) else 1 << 30
        if self.hold:
            self._held.append((ws, rid, out))
        else:
            await self._done(ws, rid, out)

    async def _done(self, ws: ServerConnection, rid: str, limit: int, status: str = "completed") -> None:
        u = self.usage
        text_out = min(u.text_out, limit)
        audio_out = min(u.audio_out, limit - text_out)
        inp = u.text_in + u.audio_in + u.image_in
        usage: dict[str, Any] = {
            "total_tokens": inp + text_out + audio_out,
            "input_tokens": inp,
            "output_tokens": text_out + audio_out,
        }
        if u.details:
            usage["input_token_details"] = {
                "text_tokens": u.text_in,
                "audio_tokens": u.audio_in,
                "image_tokens": u.image_in,
                "cached_tokens": u.cached_text + u.cached_audio,
                "cached_tokens_details": {
                    "text_tokens": u.cached_text,
                    "audio_tokens": u.cached_audio,
                    "image_tokens": 0,
                },
            }
            usage["output_token_details"] = {"text_tokens": text_out, "audio_tokens": audio_out}
        with contextlib.suppress(Exception):  # the relay went away
            await ws.send(
                orjson.dumps(
                    {
                        "type": "response.done",
                        "event_id": f"event_{rid}_d",
                        "response": {
                            "id": rid,
                            "object": "realtime.response",
                            "status": status,
                            "output": [],
                            "usage": usage,
                        },
                    }
                ).decode()
            )
