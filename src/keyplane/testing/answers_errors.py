"""OpenAI-shaped error bodies of the fake upstream (``{"error": {message, type, param, code}}``)."""

from __future__ import annotations

import orjson


def error_body(status: int, message: str | None = None) -> bytes:
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "requests",
    }.get(status, "server_error")
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded", 404: "unknown_url"}.get(status)
    msg = message or f"Fake upstream error {status}."
    return orjson.dumps({"error": {"message": msg, "type": kind, "param": None, "code": code}})
