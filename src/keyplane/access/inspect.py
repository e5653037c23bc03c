"""What a request body asks for: every model it names and every hosted tool it would use.

Read as an attacker would write it: the whole JSON body is walked (not only ``tools``), with every
duplicated key seen, keys compared case-insensitively (``object_pairs_hook``; a parser that keeps the first
value and one that keeps the last, or matches keys in any case, must not disagree about a policy), strings
holding JSON parsed again (a lenient upstream might), ``tool_choice``, replayed tool calls
(``web_search_call``, ``mcp_approval_response``...), Assistants' ``tool_resources``, chat's
``web_search_options``, the search models that always search, and OpenRouter's spellings (the ``web`` plugin, a
server tool ``openrouter:web_search``, a ``models`` list of fallbacks, each a model that may serve the request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

TOOLS: Final = ("code_interpreter", "file_search", "image_generation", "mcp", "web_search")
# The model a hosted tool runs when its entry names none: model permissions hold it like a named one.
TOOL_DEFAULT_MODELS: Final = {"image_generation": "gpt-image-1"}
_NESTED_JSON_DEPTH: Final = 3  # strings holding JSON holding strings holding JSON...
_MAX_NODES: Final = 200_000  # bounded work per body (the body itself is bounded by max_body_bytes)


class Unreadable(ValueError):
    """The body cannot be read with certainty (not JSON, too deep, duplicated keys)."""


def tool_of(value: str) -> str | None:
    """The hosted tool a ``type`` value names: ``web_search_preview_2025_03_11`` and ``web_search_call`` are
    web_search, ``mcp_approval_response`` is mcp (approving a pending MCP call runs it)."""
    t = value.strip().lower().replace("-", "_")
    t = t.rsplit(":", 1)[-1].strip()  # a provider's namespace: OpenRouter's server tool `openrouter:web_search`
    for name in TOOLS:
        if t == name or t.startswith(name + "_"):
            return name
    return None


def search_model(model: str) -> bool:
    """Models that search the web on every call, with no tool named (gpt-4o-search-preview, gpt-5-search-api, and
    OpenRouter's `:online` variants of any model)."""
    m = model.lower()
    return "search-preview" in m or "search-api" in m or "-search-" in m or m.endswith("-search") or ":online" in m


@dataclass
class Asked:
    models: set[str] = field(default_factory=set)
    tools: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    stored_prompt: bool = False
    top_keys: frozenset[str] = frozenset()  # the keys of the top-level object whose value is not null


def _pairs(pairs: list[tuple[str, Any]]) -> Any:
    return _Obj(pairs)


class _Obj(list[tuple[str, Any]]):
    """A JSON object as all of its pairs, duplicates included."""


def _load(text: str | bytes) -> Any:
    return json.loads(text, object_pairs_hook=_pairs)


def read(body: bytes) -> Asked:
    """Everything ``body`` (JSON) names; raises Unreadable when it is not JSON."""
    try:
        doc = _load(body)
    except (ValueError, RecursionError):
        raise Unreadable("The request body is not valid JSON.") from None
    asked = Asked()
    if isinstance(doc, _Obj):
        asked.top_keys = frozenset(k for k, v in doc if v is not None)
        prompt = [v for k, v in doc if k == "prompt"]
        asked.stored_prompt = any(isinstance(p, _Obj) and any(k == "id" for k, _ in p) for p in prompt)
    for count, _ in enumerate(_walk(doc, asked, 0)):
        if count > _MAX_NODES:
            raise Unreadable("The request body is too large to check against the access policy.")
    return asked


def _default_model(tool: Any) -> str | None:
    """The model a ``tools`` entry runs without naming it (``{"type": "image_generation"}``: gpt-image-1)."""
    if not isinstance(tool, _Obj):
        return None
    types = [v for k, v in tool if k.strip().lower() == "type" and isinstance(v, str)]
    if any(k.strip().lower() == "model" and isinstance(v, str) for k, v in tool):
        return None  # the model it names is checked as every `model` is (a null one is the default)
    for t in types:
        name = t.strip().lower().replace("-", "_")
        if name in TOOL_DEFAULT_MODELS:
            return TOOL_DEFAULT_MODELS[name]
    return None


def _web_plugin(plugin: Any) -> bool:
    """An OpenRouter plugin that searches the web: ``{"id": "web"}`` (what an ``:online`` model is short for)."""
    return isinstance(plugin, _Obj) and any(
        k.strip().lower() == "id" and isinstance(v, str) and v.strip().lower() == "web" for k, v in plugin
    )


def _walk(v: Any, asked: Asked, nested: int) -> Iterator[None]:
    stack: list[tuple[Any, int]] = [(v, nested)]
    while stack:
        node, depth = stack.pop()
        yield None
        if isinstance(node, _Obj):
            seen: set[str] = set()
            for k, val in node:
                folded = k.casefold()  # a case-insensitive parser (Go's encoding/json) reads `N` as `n`
                if folded in seen:
                    asked.duplicated.add(k)
                seen.add(folded)
                key = k.strip().lower()
                if isinstance(val, str):
                    if key in ("type", "tool_choice") and (t := tool_of(val)) is not None:
                        asked.tools.add(t)
                    elif key == "model":
                        asked.models.add(val)
                        if search_model(val):
                            asked.tools.add("web_search")
                if key == "tools" and isinstance(val, list):
                    asked.models.update(m for item in val if (m := _default_model(item)) is not None)
                if key == "web_search_options" and val is not None:
                    asked.tools.add("web_search")
                if key == "plugins" and isinstance(val, list) and any(_web_plugin(p) for p in val):
                    asked.tools.add("web_search")  # OpenRouter's `web` plugin searches for any model
                if key == "models" and isinstance(val, list):  # OpenRouter's fallbacks: any may serve the request
                    for m in val:
                        if isinstance(m, str):
                            asked.models.add(m)
                            if search_model(m):
                                asked.tools.add("web_search")
                if key == "tool_resources" and isinstance(val, _Obj):
                    asked.tools.update(t for rk, rv in val if rv is not None and (t := tool_of(rk)) is not None)
                stack.append((val, depth))
        elif isinstance(node, list):
            stack.extend((x, depth) for x in node)
        elif isinstance(node, str) and depth < _NESTED_JSON_DEPTH:
            s = node.strip()
            if (s[:1], s[-1:]) in (("{", "}"), ("[", "]"), ('"', '"')) and len(s) > 1:
                try:
                    inner = _load(s)
                except (ValueError, RecursionError):
                    continue
                stack.append((inner, depth + 1))
