"""Every error keyplane answers with is pinned: status, type and code, in OpenAI's body shape.

Changing one of these changes what the official SDKs raise (401 AuthenticationError, 403
PermissionDeniedError, 429 RateLimitError with or without retries...): do it on purpose, here too.
A new error in keyplane.errors (any of its family modules: auth, request, quota, upstream) must be added
to PINNED, and exported by the package (``from keyplane import errors; errors.<name>(...)``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import orjson
import pytest

from keyplane import errors

# name -> (status, type, code); "<x>" in a code is the value of the argument x.
PINNED: dict[str, tuple[int, str, str | None]] = {
    "access_refused": (403, "invalid_request_error", "<code>"),
    "admin_key_required": (401, "invalid_request_error", "invalid_api_key"),
    "bad_request": (400, "invalid_request_error", None),
    "client_closed": (499, "invalid_request_error", "client_closed"),
    "conflict": (409, "invalid_request_error", None),
    "cost_not_bounded": (403, "invalid_request_error", "cost_not_bounded"),
    "credit_used_up": (429, "insufficient_quota", "insufficient_quota"),
    "forbidden": (403, "invalid_request_error", None),
    "headers_too_large": (431, "invalid_request_error", "headers_too_large"),
    "insufficient_quota": (429, "insufficient_quota", "insufficient_quota"),
    "internal_error": (500, "server_error", "internal_error"),
    "invalid_json": (400, "invalid_request_error", None),
    "invalid_key": (401, "invalid_request_error", "invalid_api_key"),
    "invalid_value": (400, "invalid_request_error", "invalid_value"),
    "ip_not_allowed": (403, "invalid_request_error", "ip_not_allowed"),
    "key_inactive": (401, "invalid_request_error", "invalid_api_key"),
    "limits_unavailable": (503, "server_error", "limits_unavailable"),
    "usage_journal_unavailable": (503, "server_error", "usage_journal_unavailable"),
    "method_not_allowed": (405, "invalid_request_error", "method_not_allowed"),
    "mismatched_organization": (401, "invalid_request_error", "mismatched_organization"),
    "mismatched_project": (401, "invalid_request_error", "mismatched_project"),
    "missing_key": (401, "invalid_request_error", None),
    "missing_model": (400, "invalid_request_error", "missing_required_parameter"),
    "missing_scope": (403, "invalid_request_error", "missing_scope"),
    "model_not_found": (404, "invalid_request_error", "model_not_found"),
    "model_not_permitted": (403, "invalid_request_error", "model_not_permitted"),
    "model_not_priced": (400, "invalid_request_error", "model_not_priced"),
    "no_upstream": (503, "server_error", "upstream_unavailable"),
    "not_a_json_object": (400, "invalid_request_error", "invalid_body"),
    "not_found": (404, "invalid_request_error", None),
    "object_not_found": (404, "invalid_request_error", "object_not_found"),
    "path_not_proxied": (404, "invalid_request_error", "unknown_url"),
    "project_archived": (401, "invalid_request_error", "project_archived"),
    "rate_limited": (429, "tokens", "rate_limit_exceeded"),
    "request_too_large": (429, "tokens", "rate_limit_exceeded"),
    "spend_limit_exceeded": (429, "insufficient_quota", "<scope>_spend_limit_exceeded"),
    "spend_limit_reached": (429, "insufficient_quota", "<scope>_spend_limit_exceeded"),
    "stale_authority": (503, "server_error", "authority_stale"),
    "store_unavailable": (503, "server_error", "<store>_unavailable"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "tool_not_permitted": (403, "invalid_request_error", "tool_not_permitted"),
    "unknown_url": (404, "invalid_request_error", "unknown_url"),
    "upstream_bad_response": (502, "server_error", "upstream_bad_response"),
    "upstream_error": (502, "server_error", "upstream_error"),
    "upstream_skipped": (503, "server_error", "upstream_not_configured"),
    "upstream_stream_broken": (502, "server_error", "upstream_stream_broken"),
    "upstream_timeout": (504, "server_error", "upstream_timeout"),
    "upstream_unreachable": (502, "server_error", "upstream_unreachable"),
}

OPENAI_TYPES = {"invalid_request_error", "insufficient_quota", "server_error", "tokens", "requests"}


def _sample(name: str, annotation: object) -> object:
    a = str(annotation)
    if "list" in a:
        return [("openai", "no key")]
    if a.startswith("int"):
        return 1_000_000
    if a.startswith("float"):
        return 1.5
    return f"<{name}>"


def _constructors() -> dict[str, object]:
    """Every public function defined in a module of the errors package (not only those it exports)."""
    found: dict[str, object] = {}
    for info in pkgutil.iter_modules(errors.__path__, errors.__name__ + "."):
        module = importlib.import_module(info.name)
        for n, f in inspect.getmembers(module, inspect.isfunction):
            if f.__module__ == module.__name__ and not n.startswith("_"):
                assert n not in found, f"{n} is defined twice in keyplane.errors"
                found[n] = f
    return found


def test_every_error_is_pinned() -> None:
    assert sorted(_constructors()) == sorted(PINNED), "add the new error to PINNED (or remove the old one)"


def test_every_error_is_exported_by_the_package() -> None:
    """Callers write ``errors.bad_request(...)``: each constructor (and APIError) is the package's own name."""
    assert sorted(errors.__all__) == sorted([*PINNED, "APIError"])
    for name, f in _constructors().items():
        assert getattr(errors, name) is f


@pytest.mark.parametrize("name", sorted(PINNED))
def test_error_shape(name: str) -> None:
    f = getattr(errors, name)
    params = inspect.signature(f).parameters  # type: ignore[arg-type]
    e = f(
        **{
            p: _sample(p, v.annotation)
            for p, v in params.items()  # type: ignore[operator]
            if v.default is inspect.Parameter.empty
        }
    )
    assert isinstance(e, errors.APIError)
    assert (e.status, e.type, e.code) == PINNED[name]
    assert e.type in OPENAI_TYPES
    body = orjson.loads(e.body())
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip() == message and len(message) >= 5
    assert "Traceback" not in message and "None" not in message.split()
