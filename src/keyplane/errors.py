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


def project_archived(masked: str, project_name: str, project_id: str) -> APIError:
    """A key of an archived project: archiving stops every key of the project at once."""
    return APIError(
        401,
        f"The API key {masked} belongs to project `{project_name}` ({project_id}), which has been archived; "
        "keys of an archived project can no longer be used. Use a key of an active project.",
        code="project_archived",
    )


# --- authorization (403) ---------------------------------------------------------------------


def missing_scope(scope: str, role_hint: str = "") -> APIError:
    msg = (
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. "
        "Check that this API key's permissions in keyplane (All, Restricted or Read only) allow it: a keyplane "
        "owner can change them on the key's dashboard page or with `keyplane keys permissions`."
    )
    if role_hint:
        msg = f"{msg} {role_hint}"
    return APIError(403, msg, code="missing_scope")


def admin_key_required(hint: str) -> APIError:
    return APIError(401, hint, code="invalid_api_key")


def forbidden(message: str, code: str | None = None) -> APIError:
    return APIError(403, message, code=code)


# Access policies (keyplane.access, docs/access-control.md): refused before any upstream call.
def access_refused(message: str, code: str) -> APIError:
    return APIError(403, message, code=code)


def model_not_permitted(model: str, scope: str, target: str, mode: str) -> APIError:
    where = f"project {target}" if scope == "project" else f"API key {target}"
    how = "is not in the allow list" if mode == "allow_list" else "is in the deny list"
    return APIError(
        403,
        f"The model `{model}` {how} of the model permissions of {where}. "
        "Ask your keyplane administrator to change the policy.",
        param="model",
        code="model_not_permitted",
    )


def tool_not_permitted(tool: str, scope: str, target: str) -> APIError:
    where = f"project {target}" if scope == "project" else f"API key {target}"
    return APIError(
        403,
        f"The hosted tool `{tool}` is disabled by the hosted tool permissions of {where}.",
        param="tools",
        code="tool_not_permitted",
    )


def ip_not_allowed(address: str, scope: str) -> APIError:
    return APIError(
        403,
        f"Requests from the address {address} are not allowed by the IP allowlist of this {scope}.",
        code="ip_not_allowed",
    )


# --- request errors (400/404/409/413/422) ----------------------------------------------------


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def headers_too_large(count: int, size: int) -> APIError:
    return APIError(
        431,
        f"Request headers too large: keyplane accepts at most {count} headers and {size // 1024} KiB of them.",
        code="headers_too_large",
    )


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


def client_closed() -> APIError:
    """The client went away while its upload was streaming to the upstream (nginx's 499; nobody reads it)."""
    return APIError(499, "The client closed the connection before its request body was sent.", code="client_closed")


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes (setting max_body_bytes).",
        code="request_too_large",
    )


# --- quota, spend limits, rate limits (429; docs/limits-and-billing.md) ----------------------

_NO_RETRY = {"x-should-retry": "false"}  # waiting does not help: the SDKs must not retry
_RATE_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


def insufficient_quota(detail: str = "") -> APIError:
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return APIError(
        429, f"{msg} {detail}".strip(), type="insufficient_quota", code="insufficient_quota", headers=dict(_NO_RETRY)
    )


def spend_limit_exceeded(scope: str, what: str, amount: str, spent: str, resets: str, cost: str = "") -> APIError:
    """``scope``: project | organization | api_key; ``what`` names it, e.g. "project `Research` (proj_...)".
    Amounts and ``resets`` already formatted (keyplane.fmt); see :func:`spend_limit_reached`."""
    may = f", and this request may cost up to {cost}" if cost else ""
    return APIError(
        429,
        f"You have reached the {scope.replace('_', ' ')} spend limit of {amount} per month for {what}: "
        f"{spent} spent this month{may}. The limit resets {resets}. Ask your keyplane administrator to raise it.",
        type="insufficient_quota",
        code=f"{scope}_spend_limit_exceeded",
        headers=dict(_NO_RETRY),
    )


def spend_limit_reached(
    scope: str, what: str, limit_micros: int, spent_micros: int, cost_micros: int, now: float, period_end: float
) -> APIError:
    """The spend-limit 429 from amounts in micro-dollars: the limit as set, spent rounded up, the refused
    request's cost (its reservation) rounded up, the reset as a date and a countdown."""
    from keyplane import fmt

    return spend_limit_exceeded(
        scope,
        what,
        fmt.usd(limit_micros),
        fmt.usd(spent_micros, "up"),
        fmt.until(now, period_end),
        fmt.usd(cost_micros, "up") if cost_micros else "",
    )


def credit_used_up(available_micros: int, cap_micros: int, cost_micros: int) -> APIError:
    """The prepaid-credit 429: available rounded down (as the credit balance shows it), cost rounded up."""
    from keyplane import fmt

    return insufficient_quota(
        f"(keyplane: the organization's prepaid credit is used up: {fmt.usd(max(0, available_micros), 'down')} "
        f"available of {fmt.usd(cap_micros, 'down')}, and this request may cost up to {fmt.usd(cost_micros, 'up')}. "
        "Ask your keyplane administrator for a credit grant.)"
    )


def rate_limited(
    model: str, where: str, unit: str, limit: int, used: int, requested: int, wait: str, wait_s: float
) -> APIError:
    """``unit`` is one of RPM, RPD, TPM, TPD; ``wait`` the Go-style duration of ``wait_s`` seconds."""
    import math

    kind = "requests" if unit[0] == "R" else "tokens"
    per = "min" if unit[-1] == "M" else "day"
    return APIError(
        429,
        f"Rate limit reached for {model} in {where} on {kind} per {per} ({unit}): Limit {limit}, Used {used}, "
        f"Requested {requested}. Please try again in {wait}. {_RATE_DOCS}",
        type=kind,
        code="rate_limit_exceeded",
        headers={
            "retry-after": str(max(1, math.ceil(wait_s))),
            "retry-after-ms": str(max(1, math.ceil(wait_s * 1000))),
        },
    )


def request_too_large(model: str, where: str, unit: str, limit: int, requested: int) -> APIError:
    """One request needs more tokens than the per-minute (or per-day) limit allows at all."""
    per = "min" if unit[-1] == "M" else "day"
    return APIError(
        429,
        f"Request too large for {model} in {where} on tokens per {per} ({unit}): Limit {limit}, Requested "
        f"{requested}. The input or output tokens must be reduced in order to run successfully. {_RATE_DOCS}",
        type="tokens",
        code="rate_limit_exceeded",
        headers=dict(_NO_RETRY),
    )


def limits_unavailable() -> APIError:
    """The shared limits store (Redis) cannot be reached: refuse rather than let limits go unenforced."""
    return APIError(
        503,
        "keyplane cannot check this request's rate limits and budgets right now (the limits "
        "store is unreachable). Try again shortly.",
        type="server_error",
        code="limits_unavailable",
    )


def stale_authority(seconds: float) -> APIError:
    """This instance could not confirm its keys and limits are current for longer than its bound
    (max_staleness_seconds): refuse rather than serve a key that may have been revoked (retryable)."""
    return APIError(
        503,
        f"This keyplane instance has not been able to confirm its API keys and limits are current "
        f"for {seconds:.0f}s (it cannot reach its store or the other instances). Try again shortly; "
        "another instance may serve the request.",
        type="server_error",
        code="authority_stale",
        headers={"retry-after": "1"},
    )


def model_not_priced(model: str) -> APIError:
    return APIError(
        400,
        f"The model `{model}` has no price in keyplane's price table, so its cost cannot be billed. Ask your "
        f'keyplane administrator to add [prices."{model}"] (or [prices.default]) to keyplane.toml.',
        param="model",
        code="model_not_priced",
    )


def cost_not_bounded(endpoint: str, why: str) -> APIError:
    """A spending call whose cost keyplane cannot bound, while a spend limit or credit applies."""
    return APIError(
        403,
        f"keyplane cannot know what POST {endpoint} will cost before the call: {why}. A spend limit or prepaid "
        "credit applies to this key, its project or the organization, so the call is refused rather than let "
        "past the limit. Ask your keyplane administrator (docs/limits-and-billing.md).",
        code="cost_not_bounded",
    )


# --- upstream (5xx) --------------------------------------------------------------------------


def upstream_error(message: str, status: int = 502, code: str | None = "upstream_error") -> APIError:
    return APIError(status, message, type="server_error", code=code)


def missing_model() -> APIError:
    return APIError(
        400,
        "you must provide a model parameter",
        param="model",
        code="missing_required_parameter",
    )


def object_not_found(noun: str, object_id: str, param: str | None = None) -> APIError:
    """A provider object another project owns, or one not created through keyplane (docs/proxy.md)."""
    return APIError(404, f"No such {noun} object: {object_id}", param=param, code="object_not_found")


def not_a_json_object() -> APIError:
    return APIError(400, "The request body must be a JSON object.", code="invalid_body")


def path_not_proxied(method: str, path: str) -> APIError:
    return APIError(
        404,
        f"Invalid URL ({method} {path}): keyplane forwards only the /v1 areas a key's permissions can name "
        "(models, responses, assistants, threads, files, fine_tuning, batches, vector_stores, evals).",
        code="unknown_url",
    )


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


def upstream_bad_response(name: str, status: int) -> APIError:
    return APIError(
        502,
        f"The upstream `{name}` returned a malformed response (HTTP {status}, not the JSON expected).",
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
