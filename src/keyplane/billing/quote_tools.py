"""Hosted tools of the Responses API (web search, file search, code interpreter): the calls a request may
make and what each costs (reserved by the token quote, billing/quote_tokens.py), and what the calls a
response made cost (settle, batch output).

A request that sets no ``max_tool_calls`` is given one, as it is given an output limit, so that what is
reserved bounds what the upstream may do; a tool keyplane does not price makes the quote an estimate. A
code interpreter session is priced by its container's ``memory_limit`` (:func:`container_price`).
"""

from __future__ import annotations

from typing import Final

import orjson

from keyplane import model_names
from keyplane.billing.prices import PriceTable
from keyplane.billing.prices_file import DEFAULT_CONTAINER
from keyplane.billing.quote_media import MAX_PARTIAL_IMAGES, partial_images_cost
from keyplane.billing.quote_record import with_field

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


def hosted_tools(prices: PriceTable, endpoint: str, body: bytes) -> str | tuple[int, dict[str, int], bytes | None]:
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
        if kind == "code_interpreter":
            session = container_price(prices, t.get("container"))
            if isinstance(session, str):
                return session
            price = session
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
        new_body = with_field(body, "max_tool_calls", calls)
    return calls, per, new_body


def containers(prices: PriceTable) -> dict[str, int]:
    """Micro-dollars per code interpreter container session by ``memory_limit`` (a table without prices by
    memory prices its default container only, at its one ``code_interpreter`` figure)."""
    if prices.containers:
        return prices.containers
    one = prices.tools.get("code_interpreter")
    return {} if one is None else {DEFAULT_CONTAINER: one}


def container_price(prices: PriceTable, container: object) -> int | str:
    """Micro-dollars per session of a code interpreter tool's ``container``, or why it cannot be bounded.

    ``{"type": "auto", "memory_limit": "4g"}``: the price of its memory ("1g", OpenAI's default, when it
    names none); a memory the table does not price makes the quote an estimate, as a tool keyplane does not
    price does (refused under money controls, ``cost_not_bounded``; served where none applies, the
    provider being the judge of which memory limits exist). A container named by id (created by ``POST
    /v1/containers``, which takes a ``memory_limit`` keyplane does not see here) or in a shape keyplane
    does not read: the dearest container the table prices, when it prices any beyond the default one."""
    by_memory = containers(prices)
    if isinstance(container, dict):
        memory = container.get("memory_limit")
        if memory is None:
            memory = DEFAULT_CONTAINER
        key = memory.strip().lower() if isinstance(memory, str) else None
        if key is not None and key in by_memory:
            return by_memory[key]
        priced = ", ".join(f"`{m}`" for m in by_memory) or "none"
        return (
            f"its code interpreter container asks for `memory_limit` {str(memory)[:20]!r}, a container size the "
            f"price table does not price (it prices: {priced})"
        )
    if any(m != DEFAULT_CONTAINER for m in by_memory):
        return max(by_memory.values())
    return (
        "its code interpreter container is named by id (or in a shape keyplane does not read), so its memory "
        "and price are unknown, and the price table prices only the default container"
    )


def tool_prices(prices: PriceTable) -> dict[str, int]:
    """The highest price per call of each usage kind (for calls a request did not declare: a code
    interpreter session at the dearest container)."""
    out: dict[str, int] = {}
    for tool, kind in TOOL_KINDS.items():
        if tool in prices.tools:
            out[kind] = max(out.get(kind, 0), prices.tools[tool])
    if by_memory := containers(prices):
        out["code_interpreter_sessions"] = max(out.get("code_interpreter_sessions", 0), *by_memory.values())
    if (image := image_call_price(prices)) is not None:
        out["images"] = image
    return out


def image_call_price(prices: PriceTable) -> int | None:
    """Micro-dollars billed per image generation tool call (an ``image_generation_call`` output item): the
    dearest image of the tool's default model and the most partial images the tool may stream (3, each 100
    image output tokens), an upper bound (the item's quality, size and partial images are not read). None
    when the table prices no image of it: the call is then billed at the dearest tool price reserved."""
    p = prices.lookup(model_names.GPT_IMAGE)  # the tool's model when it names none (the image generation guide)
    if p is None or not p.images:
        return None
    return max(micros for _, _, micros in p.images) + partial_images_cost(p, MAX_PARTIAL_IMAGES)


def tool_cost(prices: dict[str, int] | None, calls: dict[str, int] | None) -> dict[str, int]:
    """Micro-dollars by usage kind for the hosted tool calls a response made."""
    if not prices or not calls:
        return {}
    top = max(prices.values())
    return {kind: n * prices.get(kind, top) for kind, n in calls.items() if n > 0}
