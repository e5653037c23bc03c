"""What a spending request may cost, read from its body before the call (admission's price step).

Every POST the provider bills comes here (DESIGN.md hot-path rule 0), with or without a ``model``:

- token endpoints (chat, completions, responses, embeddings): the prompt counted with the model's
  tokenizer, plus the output it may write. A request without an output limit is given one: the
  model's ``max_output`` from the price table (or ``default_max_tokens`` for a model without one) is
  reserved *and* written into the forwarded body (``max_completion_tokens``, ``max_tokens``,
  ``max_output_tokens``), so what is reserved is what the upstream may write;
- images: per image by model, quality and size (the most expensive the request allows when it says
  ``auto``), plus the prompt's tokens for gpt-image models;
- speech: per character of ``input``;
- transcription and translation: per minute, which cannot be known before the audio is decoded: an
  estimate from the upload's size (refused where a spend limit or credit applies);
- everything else that spends (fine-tuning, assistants runs, realtime, videos...): no price. A batch
  (``POST /v1/batches``) has none here either: admission prices it from its input file, quoted line by
  line with this code when it was uploaded (billing/batches.py).

A :class:`Quote` says which, and admission decides (docs/limits-and-billing.md "What a request may cost").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

import orjson

from keyplane import errors
from keyplane.billing.prices import MICROS, Price, PriceTable
from keyplane.limits import tokens

TOKEN_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
NO_OUTPUT: Final = frozenset({"/v1/embeddings"})
# The output-limit field keyplane sets when a request has none (the one the endpoint reads).
OUTPUT_FIELD: Final = {
    "/v1/chat/completions": "max_completion_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
}
IMAGES: Final = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"})
SPEECH: Final = "/v1/audio/speech"
TRANSCRIBE: Final = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
MAX_IMAGES: Final = 10  # the images API's largest n
# The duration an upload is reserved at: 8 kbit/s, the least bitrate speech codecs are used at (opus and
# mp3 go down to 6-8 kbit/s), so a file cannot carry more audio than it reserves; most are over-estimated.
AUDIO_BYTES_PER_MINUTE: Final = 60_000
# Tokens charged (at the model's input price) per input image of a gpt-image edit.
EDIT_IMAGE_TOKENS: Final = 6_000

_WHY: Final = (
    ("/v1/batches", "a batch is priced only at its creation, from an input file uploaded through keyplane"),
    ("/v1/fine_tuning", "training is billed per token of an uploaded file keyplane does not read"),
    ("/v1/threads", "a run reads its whole stored thread and may call paid tools"),
    ("/v1/evals", "an eval run calls models over a stored data set"),
    ("/v1/realtime", "a realtime session is billed as it runs, outside the request"),
)


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


def quote(
    prices: PriceTable,
    endpoint: str,
    model: str | None,
    body: bytes,
    max_tokens: int | None,
    context_ref: bool,
    form: dict[str, str] | None,
    default_max_tokens: int,
    upload: Any = None,
    default_tier: str | None = None,
) -> Quote:
    """``upload``: a multipart upload not held in ``body`` (proxy/uploads.py: ``estimate_bytes``, ``files``);
    ``body`` is then its beginning (the text fields). ``default_tier``: the tier the upstreams serve a request
    that names none (or `auto`) at, when it is not the standard one; such a request is priced at it."""
    if endpoint in TOKEN_ENDPOINTS:
        return _tokens(prices, endpoint, model, body, max_tokens, context_ref, default_max_tokens, default_tier)
    if endpoint in IMAGES:
        files = upload.files if upload is not None else body.count(b"filename=")
        return _images(prices, endpoint, model, body, form, files)
    if endpoint == SPEECH:
        return _speech(prices, model, body)
    if endpoint in TRANSCRIBE:
        return _transcribe(prices, model, form, upload.estimate_bytes if upload is not None else len(body))
    why = next((w for prefix, w in _WHY if endpoint.startswith(prefix)), "keyplane has no price for this endpoint")
    return Quote(model, unpriced=errors.cost_not_bounded(endpoint, why))


def _tokens(
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
                q.body = _with_field(body, field, limit)
                if q.body is not None:
                    q.out_limit = limit
        out = (limit + m.predicted) * n  # a prediction's unused tokens are billed as output, past the limit
    seen = prompt
    if context_ref or m.unbounded:
        # Input billed that is not in the body (previous_response_id, conversation, files, audio, stored
        # prompts, item references): up to the model's context window.
        if price.context_window:
            seen = max(prompt, price.context_window)
        else:
            q.estimate = (
                "its input includes content whose size keyplane cannot see (a stored conversation, a "
                "file, audio), and the model has no context_window in the price table"
            )
    tool_cost = 0
    if m.hosted_tools:
        hosted = _hosted_tools(prices, endpoint, q.body or body)
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


# Hosted tools of the Responses API keyplane prices: the tool type -> the usage kind it is metered in.
TOOL_KINDS: Final = {
    "web_search": "web_search_calls",
    "web_search_2025_08_26": "web_search_calls",
    "web_search_preview": "web_search_calls",
    "web_search_preview_2025_03_11": "web_search_calls",
    "file_search": "file_search_calls",
    "code_interpreter": "code_interpreter_sessions",
}
# Hosted tool calls a response may make when the request sets no max_tool_calls (keyplane sets it, as
# it sets the output limit, so that what is reserved bounds what the upstream may do).
DEFAULT_TOOL_CALLS: Final = 8


def _hosted_tools(prices: PriceTable, endpoint: str, body: bytes) -> str | tuple[int, dict[str, int], bytes | None]:
    """(calls allowed, price per call by usage kind, the body with max_tool_calls set or None), or why
    the request's hosted tools cannot be bounded."""
    if endpoint != "/v1/responses":
        return (
            "it enables hosted tools (web search options, ...) that the provider bills per call, which "
            "keyplane prices on the Responses API only"
        )
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "its body is not JSON"
    tools = obj.get("tools") if isinstance(obj, dict) else None
    per: dict[str, int] = {}
    for t in tools if isinstance(tools, list) else []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in ("function", "custom"):
            continue
        usage_kind = TOOL_KINDS.get(kind) if isinstance(kind, str) else None
        price = prices.tools.get(kind) if isinstance(kind, str) else None
        if usage_kind is None or price is None:
            return (
                f"it enables the hosted tool `{str(kind)[:40]}`, which the provider bills in ways keyplane "
                "does not price"
            )
        per[usage_kind] = max(per.get(usage_kind, 0), price)
    if isinstance(obj, dict) and obj.get("prompt") is not None:
        # A stored prompt may enable any hosted tool, which the body does not show: every call is reserved at
        # the dearest per-call price of each kind, and max_tool_calls bounds them all.
        for usage_kind, price in tool_prices(prices).items():
            per[usage_kind] = max(per.get(usage_kind, 0), price)
    if not per:
        return "it may use hosted tools, and the price table prices none"
    calls = obj.get("max_tool_calls") if isinstance(obj, dict) else None
    new_body = None
    if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
        calls = DEFAULT_TOOL_CALLS
        new_body = _with_field(body, "max_tool_calls", calls)
    return calls, per, new_body


def tool_prices(prices: PriceTable) -> dict[str, int]:
    """The highest price per call of each usage kind (for calls a request did not declare)."""
    out: dict[str, int] = {}
    for tool, kind in TOOL_KINDS.items():
        if tool in prices.tools:
            out[kind] = max(out.get(kind, 0), prices.tools[tool])
    return out


def tool_cost(prices: dict[str, int] | None, calls: dict[str, int] | None) -> dict[str, int]:
    """Micro-dollars by usage kind for the hosted tool calls a response made."""
    if not prices or not calls:
        return {}
    top = max(prices.values())
    return {kind: n * prices.get(kind, top) for kind, n in calls.items() if n > 0}


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


def _with_field(body: bytes, field: str, value: int) -> bytes | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    obj[field] = value
    return orjson.dumps(obj)


def _fields(body: bytes, form: dict[str, str] | None) -> dict[str, object]:
    if form is not None:
        return dict(form)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _json_images(f: dict[str, object]) -> int:
    """The input images of a JSON image edit: each entry of ``images``, and ``image`` and ``mask`` when given."""
    n = 0
    for key in ("images", "image", "mask"):
        v = f.get(key)
        if isinstance(v, list):
            n += len(v)
        elif v is not None:
            n += 1
    return n


def _images(
    prices: PriceTable, endpoint: str, model: str | None, body: bytes, form: dict[str, str] | None, files: int
) -> Quote:
    f = _fields(body, form)
    named = f.get("model")
    name: str = model or (named if isinstance(named, str) else None) or "dall-e-2"  # the API's default
    price = prices.lookup(name)
    if price is None or not price.images:
        return Quote(name, unpriced=errors.model_not_priced(name))
    unread = form is None and not f  # an upload whose fields the proxy did not hand over: assume the most
    raw_n = f.get("n", MAX_IMAGES if unread else 1)
    try:
        n = int(raw_n)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = MAX_IMAGES
    n = n if 1 <= n <= MAX_IMAGES else MAX_IMAGES
    qualities = {q for q, _, _ in price.images}
    dall_e = "standard" in qualities and not unread
    quality = str(f.get("quality") or ("standard" if dall_e else "auto"))
    size = str(f.get("size") or ("1024x1024" if dall_e else "auto"))
    cands = [m for q, s, m in price.images if quality in (q, "auto") and size in (s, "auto")]
    if not cands:  # a quality or size the table does not list: the most expensive of the rest
        cands = [m for _, s, m in price.images if s == size] or [m for _, _, m in price.images]
    cost = n * max(cands)
    prompt = 0
    if price.input:
        p = f.get("prompt")
        prompt = tokens.counter(name).count(p) if isinstance(p, str) else 0
        if endpoint == "/v1/images/edits":
            if form is None and f:  # a JSON edit: its inputs are `images` (and `image`, `mask`), not file parts
                files = _json_images(f)
            prompt += EDIT_IMAGE_TOKENS * max(1, files)
        cost += -(-prompt * price.input // MICROS)
    return Quote(name, cost=cost, prompt=prompt, flat=True, units=n)


def _speech(prices: PriceTable, model: str | None, body: bytes) -> Quote:
    f = _fields(body, None)
    name = model or "tts-1"
    price = prices.lookup(name)
    if price is None or price.per_1m_characters is None:
        return Quote(name, unpriced=errors.model_not_priced(name))
    text = f.get("input")
    chars = len(text) if isinstance(text, str) else len(body)
    return Quote(name, cost=-(-chars * price.per_1m_characters // MICROS), flat=True, units=chars)


def minutes_of(size: int, max_seconds: int | None = None) -> int:
    """The most minutes of audio an upload of ``size`` bytes may hold (at least one), at most the model's
    ``max_seconds`` (a longer file is refused by the provider)."""
    minutes = max(1, -(-size // AUDIO_BYTES_PER_MINUTE))
    return min(minutes, max(1, -(-max_seconds // 60))) if max_seconds else minutes


def _transcribe(prices: PriceTable, model: str | None, form: dict[str, str] | None, size: int) -> Quote:
    name = model or (form or {}).get("model") or "whisper-1"
    price = prices.lookup(name)
    if price is None or price.per_minute is None:
        return Quote(name, unpriced=errors.model_not_priced(name))
    minutes = minutes_of(size, price.max_seconds)
    if price.audio_input is not None and price.context_window and price.max_output:
        # Billed per token (gpt-4o-transcribe): bounded by a context window of audio and the output limit;
        # settle bills the tokens the answer reports, else this bound.
        bound = price.max_cost(price.context_window, price.max_output)
        return Quote(name, cost=bound, price=price, units=minutes * 60, per_minute=price.per_minute)
    return Quote(
        name,
        cost=minutes * price.per_minute,
        flat=True,
        units=minutes * 60,
        per_minute=price.per_minute,
        estimate="the duration of the audio is not known before it is decoded",
    )
