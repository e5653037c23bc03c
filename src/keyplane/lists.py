"""The OpenAI list object (``{"object": "list", "data", "first_id", "last_id", "has_more"}``), in one place.

The admin API answers with it, and the dashboard builds the same shape from the features' service functions
(keyplane.web.features), so neither imports the other: this module knows no HTTP.
"""

from __future__ import annotations

from typing import Any

from keyplane.domain import Invalid


def list_response(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def cursor_page(items: list[dict[str, Any]], after: str | None, limit: int, order: str | None) -> dict[str, Any]:
    """A ``SyncNextCursorPage`` (a list response plus ``next``) over a small, fully read list."""
    if order == "desc":
        items = items[::-1]
    elif order not in (None, "asc"):
        raise Invalid("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    if after:
        at = next((i for i, x in enumerate(items) if x["id"] == after), None)
        if at is None:
            raise Invalid(f"No object with id '{after}' to page from.", param="after")
        items = items[at + 1 :]
    shown, more = items[:limit], len(items) > limit
    return {**list_response(shown, more), "next": shown[-1]["id"] if more and shown else None}
