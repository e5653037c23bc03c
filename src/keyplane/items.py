"""Items of a Responses input (or of a conversation's items) that are only an id: the provider reads them from
what it stored under that id, under its key, every project's. proxy/object_refs.py holds them to their owner;
limits/tokens.py reserves the model's context window for them (their size is not in the body).

An item given with its content (a stateless replay of a response's output: a message with its ``content``, a
function call with its ``arguments``, an image generation call with its ``result``) is what it says and names
nothing stored.
"""

from __future__ import annotations

from typing import Any, Final

# Item types and the fields that carry their content. An item given with its ``id`` and none of them is read from
# what the provider stored under that id (OpenAI's multi-turn image editing passes an earlier image back as
# ``{"type": "image_generation_call", "id": "ig_..."}``); given with its content (a stateless replay of a
# response's output), it is what it says and names nothing.
CONTENT_OF: Final[dict[str, tuple[str, ...]]] = {
    "message": ("content",),
    "function_call": ("arguments",),
    "function_call_output": ("output",),
    "custom_tool_call": ("input",),
    "custom_tool_call_output": ("output",),
    "computer_call": ("action",),
    "computer_call_output": ("output",),
    "local_shell_call": ("action",),
    "local_shell_call_output": ("output",),
    "shell_call": ("action",),
    "shell_call_output": ("output",),
    "apply_patch_call": ("operation",),
    "apply_patch_call_output": ("output",),
    "image_generation_call": ("result",),
    "web_search_call": ("action",),
    "file_search_call": ("queries", "results"),
    "code_interpreter_call": ("code", "outputs"),
    "mcp_call": ("arguments", "output"),
    "mcp_list_tools": ("tools",),
    "mcp_approval_request": ("arguments",),
    "reasoning": ("encrypted_content",),  # a summary is not the item: without its encrypted content, it is read
    "compaction": ("encrypted_content",),
}
_BARE_ITEM: Final = frozenset({"type", "id", "status"})  # an item of a type not listed above, reduced to its id


def by_id(node: dict[str, Any]) -> bool:
    """An item the provider would read by its ``id``: an explicit item reference, or an item of a known type
    given without any of its content (:data:`CONTENT_OF`; a reasoning item without its ``encrypted_content``)."""
    if not isinstance(node.get("id"), str):
        return False
    t = node.get("type")
    if t == "item_reference":
        return True
    fields = CONTENT_OF.get(t) if isinstance(t, str) else None
    return fields is not None and all(node.get(f) is None for f in fields)


def bare(e: dict[str, Any]) -> bool:
    """An item of an input list that is only an id: untyped (the API reads it as a reference), or of a type
    :data:`CONTENT_OF` does not know with nothing but its type and status beside its id. (An item of a known type
    is :func:`by_id`'s, wherever it stands.)"""
    if not isinstance(e.get("id"), str):
        return False
    t = e.get("type")
    return t is None or (t not in CONTENT_OF and t != "item_reference" and _BARE_ITEM.issuperset(e))
