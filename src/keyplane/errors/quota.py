"""Quota, spend limits, rate limits and prices (docs/limits-and-billing.md): the 429s, and the refusals of
a call whose cost keyplane cannot bill or bound.

Built on :class:`keyplane.errors.base.APIError`; import them through ``keyplane.errors``.
"""

from __future__ import annotations

from keyplane.errors.base import APIError

_NO_RETRY = {"x-should-retry": "false"}  # waiting does not help: the SDKs must not retry
_RATE_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


# --- quota and spend limits (429) ------------------------------------------------------------


def insufficient_quota(detail: str = "") -> APIError:
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return APIError(
        429, f"{msg} {detail}".strip(), type="insufficient_quota", code="insufficient_quota", headers=dict(_NO_RETRY)
    )


def spend_limit_exceeded(
    scope: str, what: str, amount: str, spent: str, resets: str, cost: str = "", left: str = ""
) -> APIError:
    """``scope``: project | organization | api_key; ``what`` names it, e.g. "project `Research` (proj_...)".
    Amounts and ``resets`` already formatted (keyplane.fmt); see :func:`spend_limit_reached`. ``left``: what is
    left of the limit when it is not used up, only too little for this request's reservation (its worst case)."""
    limit = f"the {scope.replace('_', ' ')} spend limit of {amount} per month for {what}"
    if left and cost:
        return APIError(
            429,
            f"This request may cost up to {cost}, more than the {left} left of {limit}: {spent} spent this month. "
            f"A request reserves the most it may cost before it runs (its output at its max_tokens, "
            f"max_completion_tokens or max_output_tokens, else the model's largest output): set a lower one to "
            f"reserve less, or ask your keyplane administrator to raise the limit. The limit resets {resets}.",
            type="insufficient_quota",
            code=f"{scope}_spend_limit_exceeded",
            headers=dict(_NO_RETRY),
        )
    may = f", and this request may cost up to {cost}" if cost else ""
    return APIError(
        429,
        f"You have reached {limit}: {spent} spent this month{may}. The limit resets {resets}. Ask your keyplane "
        "administrator to raise it.",
        type="insufficient_quota",
        code=f"{scope}_spend_limit_exceeded",
        headers=dict(_NO_RETRY),
    )


def spend_limit_reached(
    scope: str, what: str, limit_micros: int, spent_micros: int, cost_micros: int, now: float, period_end: float
) -> APIError:
    """The spend-limit 429 from amounts in micro-dollars: the limit as set, spent rounded up, the refused
    request's cost (its reservation) rounded up, the reset as a date and a countdown. When the limit is not used
    up (what is spent and reserved is under it), the message says what is left and that the request's reservation
    is what does not fit (a lower output limit reserves less), rather than "reached"."""
    from keyplane import fmt

    left = limit_micros - spent_micros
    return spend_limit_exceeded(
        scope,
        what,
        fmt.usd(limit_micros),
        fmt.usd(spent_micros, "up"),
        fmt.until(now, period_end),
        fmt.usd(cost_micros, "up") if cost_micros else "",
        fmt.usd(left, "down") if left > 0 and cost_micros else "",
    )


def credit_used_up(available_micros: int, cap_micros: int, cost_micros: int) -> APIError:
    """The prepaid-credit 429: available rounded down (as the credit balance shows it), cost rounded up."""
    from keyplane import fmt

    return insufficient_quota(
        f"(keyplane: the organization's prepaid credit is used up: {fmt.usd(max(0, available_micros), 'down')} "
        f"available of {fmt.usd(cap_micros, 'down')}, and this request may cost up to {fmt.usd(cost_micros, 'up')}. "
        "Ask your keyplane administrator for a credit grant.)"
    )


# --- rate limits (429, and 503 when they cannot be checked) ----------------------------------


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


def usage_journal_unavailable() -> APIError:
    """The usage journal cannot keep this request's hold (a full disk): refused before the upstream call, since
    its spend could not survive a crash (usage/holds.py)."""
    return APIError(
        503,
        "keyplane cannot record this request's spend right now (its usage journal's disk is full or unwritable). "
        "Try again shortly.",
        type="server_error",
        code="usage_journal_unavailable",
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


# --- prices (400, 403) -----------------------------------------------------------------------


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
