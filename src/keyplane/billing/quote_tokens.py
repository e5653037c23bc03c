"""Quotes of the token endpoints (chat, completions, responses, embeddings): the prompt counted with the
model's tokenizer, plus the output it may write, at the service tier it will be served at.

A request without an output limit is given one: the model's ``max_output`` from the price table (or
``default_max_tokens`` for a model without one) is reserved *and* written into the forwarded body
(``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``), so what is reserved is what the upstream
may write. Hosted tools it enables are bounded and priced by billing/quote_tools.py.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import orjson

from keyplane import errors
from keyplane.billing.price import MICROS, Price
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote_record import Quote, TierPricing, with_field
from keyplane.billing.quote_tools import hosted_tools
from keyplane.limits import tokens

TOKEN_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
NO_OUTPUT: Final = frozenset({"/v1/embeddings"})
# The output-limit field keyplane sets when a request has none (the one the endpoint reads).
OUTPUT_FIELD: Final = {
    "/v1/chat/completions": "max_completion_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
}


def quote_tokens(
    prices: PriceTable,
    endpoint: str,
    model: str | None,
    body: bytes,
    max_tokens: int | None,
    context_ref: bool,
    default_max_tokens: int,
    default_tier: str | None = None,
) -> Quote:
    price = prices.lookup(model) if model else None
    if model is None or price is None or not price.tokens:
        # Counted all the same: the token buckets hold it when it is served at cost 0.
        prompt = tokens.measure(endpoint, model, body)[0] if model else 0
        return Quote(model, tokens=prompt, prompt=prompt, unpriced=errors.model_not_priced(model or "(none)"))
    m = tokens.measure(endpoint, model, body)
    prompt, n = m.prompt, m.n
    if m.images and price.image_tokens is not None and price.image_tokens > (known := tokens.image_tokens(model)):
        prompt += m.images * (price.image_tokens - known)  # its price entry says its images are dearer
    tier = _service_tier(body)
    at_default = tier is None or tier == "auto"
    if at_default and default_tier is not None:
        tier = default_tier  # served at the upstream's default tier, which is known not to be the standard one
    factor = prices.tier_factor(model, tier)
    q = Quote(model, prompt=prompt, tier=TierPricing(model, price, factor, at_default))
    if factor is None:
        q.estimate = f"it asks for the service tier `{str(tier)[:20]}`, which the price table does not price"
    elif factor != MICROS:
        price = price.scaled(factor)  # billed at the tier's rates (flex: half, priority: about twice)
    q.price = price
    out = 0
    if endpoint not in NO_OUTPUT:
        limit = max_tokens
        if limit is None:
            limit = price.max_output or default_max_tokens
            field = OUTPUT_FIELD.get(endpoint)
            if price.output > 0 and field is not None:
                q.body = with_field(body, field, limit)
                if q.body is not None:
                    q.out_limit = limit
        out = (limit + m.predicted) * n  # a prediction's unused tokens are billed as output, past the limit
    seen = prompt
    if context_ref or m.unbounded:
        # Input billed that is not in the body (previous_response_id, conversation, files, audio, stored
        # prompts, item references): up to the model's context window.
        if price.context_window:
            seen = q.unseen_input = max(prompt, price.context_window)
        else:
            q.estimate = (
                "its input includes content whose size keyplane cannot see (a stored conversation, a "
                "file, audio), and the model has no context_window in the price table"
            )
    tool_cost = 0
    if m.hosted_tools:
        hosted = hosted_tools(prices, endpoint, q.body or body)
        if isinstance(hosted, str):
            q.estimate = hosted
        else:
            calls, q.tools, with_calls = hosted
            if with_calls is not None:  # max_tool_calls set by keyplane (after the output limit, if it set one)
                q.body = with_calls
                if q.out_limit is None:
                    q.out_limit = max_tokens
            tool_cost = calls * max(q.tools.values())
            # Each tool call feeds the model again: up to calls + 1 model turns, each reading up to the
            # context window (search results and file chunks are billed as input tokens).
            if price.context_window:
                seen = (calls + 1) * max(prompt, price.context_window)
            else:
                q.estimate = "it enables hosted tools and the model has no context_window in the price table"
    q.cost = _output_priced(price, endpoint, q.body or body).max_cost(seen, out) + tool_cost
    q.tokens = prompt + out
    return q


class _Pairs(list[tuple[str, object]]):
    """A JSON object as all of its pairs, a key given twice included."""


def _output_priced(price: Price, endpoint: str, body: bytes) -> Price:
    """The price a reservation's output is counted at: an audio model on chat completions writes audio only
    when the request's ``modalities`` include it (or it sets ``audio``); otherwise its output is text, and is
    reserved at the text rate. Anything unclear keeps the dearest (audio) rate."""
    if price.audio_output is None or price.audio_output <= price.output or endpoint != "/v1/chat/completions":
        return price
    import json  # every pair of the top-level object: a key given twice is read as audio (parsers disagree)

    try:
        pairs = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return price
    if not isinstance(pairs, _Pairs):
        return price
    keys = [k for k, _ in pairs]
    if keys.count("modalities") > 1 or "audio" in keys:
        return price
    modalities = next((v for k, v in pairs if k == "modalities"), None)
    if modalities is not None and (
        not isinstance(modalities, list) or any(not isinstance(m, str) or m != "text" for m in modalities)
    ):
        return price  # audio asked for (or a value keyplane does not read): the audio output rate
    return dataclasses.replace(price, audio_output=None)


def _service_tier(body: bytes) -> str | None:
    # The fast path only when no key can be spelled with an escape (`"service\\u005ftier"` is the same key).
    if b'"service_tier"' not in body and b"\\u" not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    tier = obj.get("service_tier") if isinstance(obj, dict) else None
    return tier if isinstance(tier, str) else None
