"""A quote: what a spending request may cost, as admission reserves it and settle reads it back
(:class:`Quote`, with :class:`TierPricing` for a token request's service tier), and the body rewrite that
sets a bound a request lacks (its output limit, its ``max_tool_calls``) in what is forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from keyplane import errors
from keyplane.billing.price import Price


@dataclass(slots=True)  # not frozen: a frozen dataclass is built ~5x slower, and one is built per token request
class TierPricing:
    """How a token quote's service tier was priced, for settle to bill the tier the answer reports instead."""

    model: str
    base: Price  # the model's price at the standard tier (re-scaled at the tier that served)
    factor: int | None  # the tier's factor the reservation was priced at (None: a tier the table does not price)
    # The request named no tier (or `auto`): the upstream served it at its default, which settle learns from.
    at_default: bool


@dataclass(slots=True)
class Quote:
    model: str | None  # the model billed (the endpoint's default when the request names none)
    cost: int = 0  # micro-dollars: the most the request can cost
    tokens: int = 0  # for the token buckets: prompt + output allowed
    prompt: int = 0  # prompt tokens as counted
    # Input tokens reserved for input the body does not show (a previous response, a conversation, files...: up
    # to the context window), 0 when all of it is in the body: what a call cut before its usage is billed as input.
    unseen_input: int = 0
    price: Price | None = None  # token price: settle bills the usage the upstream reports
    flat: bool = False  # ``cost`` is what the call costs when it succeeds (images, speech, audio minutes)
    unpriced: errors.APIError | None = None  # no price: the refusal where money controls apply
    estimate: str | None = None  # the cost is an estimate, not a bound: why (refused under money controls)
    body: bytes | None = None  # the body with the output limit keyplane set (None: unchanged)
    out_limit: int | None = None  # that limit
    units: int = 0  # images asked, characters to speak, seconds of audio estimated (the usage API's buckets)
    tools: dict[str, int] | None = None  # hosted tools enabled: micro-dollars per call (or session) by usage kind
    # transcription: micro-dollars per minute, billed by the seconds the answer reports (else the estimate;
    # a token-priced one: by its tokens, else ``cost``, its bound)
    per_minute: int | None = None
    tier: TierPricing | None = None  # token quotes: the service tier priced (settle bills the one that served)


def with_field(body: bytes, field: str, value: int) -> bytes | None:
    """The JSON body with ``field`` set to ``value`` (None when it is not a JSON object)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    obj[field] = value
    return orjson.dumps(obj)
