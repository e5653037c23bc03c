"""Token counts when the upstream gives none: an interrupted stream, or the demo upstream
(:func:`usage_from_relay` fills a call's usage, reported or estimated).

Counts with the o200k_base tokenizer of ``keyplane.limits.tokens`` (one copy of the tables per
process); about four bytes per token if it cannot be loaded. Only used off the fast path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from keyplane.limits import tokens
from keyplane.proxy.canonical import MODEL_ENDPOINTS
from keyplane.proxy.usage import tool_calls

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.proxy.sse import StreamRelay

# The generated text of a stream, in the JSON strings that carry it: chat `content`, completions `text`,
# responses `delta`, tool call `arguments`, `refusal`. A `"delta":{` object does not match.
TEXT_FIELDS = re.compile(rb'"(?:content|text|delta|arguments|refusal|reasoning_content)":\s?"((?:[^"\\]|\\.)*)"')


def count(text: str) -> int:
    """Tokens of generated text, with o200k_base (the tokenizer admission already loaded)."""
    if not text:
        return 0
    return max(1, tokens.counter("gpt-4o").count(text))


def flatten(v: Any) -> str:
    """The text inside a message content (a string, or a list of parts with `text`)."""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return " ".join(flatten(x) for x in v)
    if isinstance(v, dict):
        for k in ("text", "content", "input_text"):
            if k in v:
                return flatten(v[k])
    return ""


def prompt_text(req: dict[str, Any]) -> str:
    parts: list[str] = []
    if isinstance(req.get("instructions"), str):
        parts.append(req["instructions"])
    messages = req.get("messages")  # what the client sent: not necessarily a list
    for m in messages if isinstance(messages, list) else ():
        if isinstance(m, dict):
            parts.append(flatten(m.get("content")))
    for k in ("prompt", "input"):
        if k in req:
            parts.append(flatten(req[k]))
    return "\n".join(p for p in parts if p)


def prompt_tokens(body: bytes) -> int:
    """Estimated prompt tokens of a JSON request body (0 when it is not JSON)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    return count(prompt_text(req)) if isinstance(req, dict) else 0


def relayed_tokens(pieces: list[bytes]) -> int:
    """Estimated output tokens from the escaped JSON strings collected while relaying a stream."""
    if not pieces:
        return 0
    try:
        text = orjson.loads(b'"' + b"".join(pieces) + b'"')
    except orjson.JSONDecodeError:
        text = b"".join(pieces).decode("utf-8", "replace")
    return count(text)


# Models that reason before they answer, writing output tokens they never stream (OpenAI's o-series, gpt-5 and
# gpt-oss, codex; Gemini 2.5 and later, Grok 3 mini and 4, Qwen 3, Magistral, GLM 4.5+, and open models named for
# it), and the request fields that ask for reasoning (OpenAI's, Anthropic's and Gemini's `thinking`, vLLM's and
# Qwen's `enable_thinking`). A name these miss: the price entry's `reasoning = true` (docs/limits-and-billing.md).
_REASONING_MODEL = re.compile(
    r"(?i)(?:^|[/:@])(?:o[1-9]|gpt-5|gpt-oss|codex)|reason|think|deepseek-r|qwq|-r1\b"
    r"|gemini-(?:2\.5|[3-9])|grok-(?:3-mini|[4-9])|qwen3|magistral|glm-4\.[5-9]|glm-[5-9]"
)
_REASONING_FIELD = re.compile(
    rb'"(?:reasoning(?:_effort)?|thinking(?:_config|_budget)?|enable_thinking|include_thoughts)"\s*:'
)


def may_reason(model: str | None, body: bytes, declared: bool | None = None) -> bool:
    """True when the call may generate output it does not stream (reasoning): a stream cut before its usage
    is then billed at the output it reserved (proxy/handler.py). ``declared``: the model's price entry's
    ``reasoning`` (True or False decides; None: the model's name and the request's fields do)."""
    if declared is not None:
        return declared
    return bool(model and _REASONING_MODEL.search(model)) or _REASONING_FIELD.search(body) is not None


def declared(ctx: RequestContext) -> bool | None:
    """The ``reasoning`` of the price admission priced the call at (None: not declared, or not priced)."""
    res = ctx.reservation
    price = res.extra.get("price") if res is not None else None
    return getattr(price, "reasoning", None)


def reserved_output(ctx: RequestContext) -> int:
    """The output tokens admission reserved for a call (its output limit x choices), 0 when nothing was."""
    res = ctx.reservation
    return 0 if res is None else max(0, int(res.tokens) - reserved_prompt(ctx))


def reserved_prompt(ctx: RequestContext) -> int:
    """The prompt tokens admission measured in the body (an upper bound; 0 when nothing was reserved)."""
    res = ctx.reservation
    prompt = res.extra.get("prompt") if res is not None else None
    return prompt if isinstance(prompt, int) else 0


def reserved_unseen_input(ctx: RequestContext) -> int:
    """The input tokens admission reserved for input the body does not show (0 when all of it is in the body)."""
    res = ctx.reservation
    unseen = res.extra.get("unseen_input") if res is not None else None
    return unseen if isinstance(unseen, int) else 0


def usage_from_relay(ctx: RequestContext, relay: StreamRelay | None) -> None:
    """The usage of a call into ``ctx``: the usage its stream (or answer) reported, else an estimate of what was
    generated until it stopped (``relay`` None: nothing relayed, the answer never came)."""
    if relay is not None and relay.usage is not None:
        ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = relay.usage.numbers()
        ctx.tool_calls = tool_calls(relay.usage)
        ctx.audio_tokens = relay.usage.audio()
        ctx.service_tier = relay.usage.service_tier
        return
    if ctx.model is None or ctx.endpoint not in MODEL_ENDPOINTS:
        return
    # No usage from the upstream: estimate what was generated until the stream stopped.
    ctx.usage_estimated = True
    # The input was read by the provider as soon as it took the call: billed at the most admission measured of it
    # (every string of the body, images at their bound) and, for input the body does not show (a previous
    # response, a conversation, files, items given by id), what admission reserved for that (the context window).
    ctx.prompt_tokens = max(prompt_tokens(ctx.body), reserved_prompt(ctx), reserved_unseen_input(ctx))
    # Past the text kept, every 3 bytes of events counts as a token: an upper bound, never less.
    ctx.completion_tokens = relayed_tokens(relay.pieces) + relay.uncounted // 3 if relay is not None else 0
    # What the provider generated without showing it is billed at the output reserved: a call it received
    # whose answer never came (nothing relayed to count), or a stream of a model that reasons unseen.
    if relay is None or relay.reasoned or may_reason(ctx.model, ctx.body, declared(ctx)):
        ctx.completion_tokens = max(ctx.completion_tokens, reserved_output(ctx))
