"""What every endpoint of the demo upstream shares: its :class:`DemoResponse` (JSON or a server-sent
event stream), OpenAI's error body, SSE framing, and the echoed text (the last user text, in pieces).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from keyplane.proxy import estimate


class DemoResponse:
    __slots__ = ("_events", "_payload", "content_type", "headers", "status")

    def __init__(self, status: int, payload: bytes = b"", events: list[bytes] | None = None) -> None:
        self.status = status
        self._payload = payload
        self._events = events
        self.content_type = "text/event-stream" if events is not None else "application/json"
        # No x-request-id: the gateway's own (unique per request) is used.
        self.headers = [(b"content-type", self.content_type.encode())]

    async def read(self) -> bytes:
        return self._payload if self._events is None else b"".join(self._events)

    async def chunks(self) -> AsyncIterator[bytes]:
        for ev in self._events if self._events is not None else [self._payload]:
            yield ev

    def close(self) -> None:
        pass


def error(status: int, message: str, code: str | None = None, param: str | None = None) -> DemoResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return DemoResponse(status, orjson.dumps(body))


def last_user_text(req: dict[str, Any]) -> str:
    if "messages" in req:
        for m in reversed(req.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                return estimate.flatten(m.get("content"))
        return ""
    for k in ("input", "prompt"):
        if k in req:
            v = req[k]
            if isinstance(v, list) and v and isinstance(v[-1], dict):
                return estimate.flatten(v[-1].get("content"))
            return estimate.flatten(v)
    return ""


def reply(req: dict[str, Any]) -> str:
    said = last_user_text(req).strip()
    return f"You said: {said}" if said else "Hello from keyplane's demo upstream."


def echo_pieces(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"
