"""keyplane's side failed: the upstream, a store, or keyplane itself (5xx).

Built on :class:`keyplane.errors.base.APIError`; import them through ``keyplane.errors``.
"""

from __future__ import annotations

from keyplane.errors.base import APIError

# --- upstream (502, 503, 504) ----------------------------------------------------------------


def upstream_error(message: str, status: int = 502, code: str | None = "upstream_error") -> APIError:
    return APIError(status, message, type="server_error", code=code)


def no_upstream(model: str | None) -> APIError:
    what = f"model `{model}`" if model else "this request"
    return APIError(
        503,
        f"No upstream is available for {what}: every upstream configured for it is failing or has no "
        "provider key set. Try again later, or ask your keyplane administrator.",
        type="server_error",
        code="upstream_unavailable",
    )


def upstream_skipped(skipped: list[tuple[str, str]], model: str | None) -> APIError:
    """No upstream for the request because those that serve it were left out at start-up for want of their
    provider key (name, variable). Not retryable: waiting does not set the variable."""
    what = f"The model `{model}` is" if model else "This endpoint is"
    names = ", ".join(f"`{n}`" for n, _ in skipped)
    envs = ", ".join(f"${e}" for _, e in skipped)
    return APIError(
        503,
        "; ".join(f"upstream {n} skipped: ${e} is not set" for n, e in skipped)
        + f". {what} served by {names}, which keyplane started without its provider key: the keyplane "
        f"administrator sets {envs} in keyplane's environment and restarts it.",
        type="server_error",
        code="upstream_not_configured",
        headers={"x-should-retry": "false"},
    )


def upstream_timeout(name: str) -> APIError:
    return APIError(504, f"The upstream `{name}` did not answer in time.", type="server_error", code="upstream_timeout")


def upstream_unreachable(name: str) -> APIError:
    return APIError(
        502, f"Could not connect to the upstream `{name}`.", type="server_error", code="upstream_unreachable"
    )


def upstream_bad_response(name: str, status: int | None) -> APIError:
    """``status`` None: the answer was not even HTTP (a garbled status line or headers)."""
    what = f"HTTP {status}, not the JSON expected" if status is not None else "not a valid HTTP answer"
    return APIError(
        502,
        f"The upstream `{name}` returned a malformed response ({what}).",
        type="server_error",
        code="upstream_bad_response",
    )


def upstream_stream_broken(name: str) -> APIError:
    return APIError(
        502,
        f"The upstream `{name}` closed the stream before it was complete.",
        type="server_error",
        code="upstream_stream_broken",
    )


# --- keyplane's own stores and bugs (500, 503) -----------------------------------------------


def store_unavailable(store: str) -> APIError:
    """The admin API cannot reach a store it needs (``store``: "database" or "redis"): nothing was changed
    unless the answer says so; retryable. The /v1 proxy keeps serving from its snapshot meanwhile."""
    what = "configuration store (database)" if store == "database" else "limits store (Redis)"
    return APIError(
        503,
        f"keyplane cannot reach its {what} right now, so this request was not completed. Try again shortly.",
        type="server_error",
        code=f"{store}_unavailable",
        headers={"retry-after": "1"},
    )


def internal_error() -> APIError:
    return APIError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
        code="internal_error",
    )
