"""Every OpenAI-shaped error keyplane answers with, built in one place.

The body is always ``{"error": {"message", "type", "param", "code"}}``
(reference/openai-surface.md "Error body"). Handlers raise :class:`APIError`; the app turns it
into a response with :func:`APIError.body` and :attr:`APIError.headers`.
"""

from __future__ import annotations

from typing import Any

import orjson

_SEE = "You can find your API key in the keyplane dashboard or ask your keyplane administrator."


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


# --- authentication (401) --------------------------------------------------------------------

def missing_key(hint: str = "") -> APIError:
    msg = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    return APIError(401, f"{msg} {hint}".strip() if hint else msg)


def invalid_key(masked: str, hint: str = "") -> APIError:
    msg = f"Incorrect API key provided: {masked}. {_SEE}"
    if hint:
        msg = f"{msg} {hint}"
    return APIError(401, msg, code="invalid_api_key")


def key_inactive(masked: str, why: str) -> APIError:
    """A key that exists but may not be used now (revoked, expired, suspended)."""
    return APIError(401, f"The API key {masked} {why}", code="invalid_api_key")


def mismatched_organization() -> APIError:
    return APIError(
        401, "OpenAI-Organization header should match organization for API key", code="mismatched_organization"
    )


def mismatched_project() -> APIError:
    return APIError(401, "OpenAI-Project header should match project for API key", code="mismatched_project")


# --- authorization (403) ---------------------------------------------------------------------

def missing_scope(scope: str, role_hint: str = "") -> APIError:
    msg = (
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. "
        "Check that you have the correct role in your organization (Reader, Writer, Owner) and project "
        "(Member, Owner), and if you're using a restricted API key, that it has the necessary scopes."
    )
    if role_hint:
        msg = f"{msg} {role_hint}"
    return APIError(403, msg, code="missing_scope")


def admin_key_required(hint: str) -> APIError:
    return APIError(401, hint, code="invalid_api_key")


def forbidden(message: str, code: str | None = None) -> APIError:
    return APIError(403, message, code=code)


# --- request errors (400/404/409/413/422) ----------------------------------------------------

def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid_json() -> APIError:
    return APIError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
    )


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def unknown_url(method: str, path: str) -> APIError:
    return APIError(
        404,
        f"Invalid URL ({method} {path})",
        code="unknown_url",
    )


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {method} not allowed for {path}", code="method_not_allowed")


def conflict(message: str, code: str | None = None) -> APIError:
    return APIError(409, message, code=code)


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes (setting max_body_bytes).",
        code="request_too_large",
    )


# --- upstream (5xx) --------------------------------------------------------------------------

def upstream_error(message: str, status: int = 502, code: str | None = "upstream_error") -> APIError:
    return APIError(status, message, type="server_error", code=code)


def internal_error() -> APIError:
    return APIError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
        code="internal_error",
    )
