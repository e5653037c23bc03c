"""The OpenAI error body and the exception that carries it.

The body is always ``{"error": {"message", "type", "param", "code"}}``
(reference/openai-surface.md "Error body"). Handlers raise :class:`APIError`; the app turns it
into a response with :func:`APIError.body` and :attr:`APIError.headers`.
"""

from __future__ import annotations

from typing import Any

import orjson


class APIError(Exception):
    """An error answered to the client in the OpenAI shape."""

    __slots__ = ("code", "headers", "message", "param", "status", "type")

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())
