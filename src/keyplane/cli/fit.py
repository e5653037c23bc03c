"""CLI tables that fit the terminal without ever cutting an id.

The ids in a table (key_..., proj_..., user-...) are what the next command needs, so they are never
truncated: their column keeps its full width (and, on a terminal narrower than the ids themselves,
folds onto the next line rather than losing characters). The other columns shrink and wrap first;
when even that does not fit, the least useful columns are left out and the table's caption says which
(``--json`` always has everything).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.table import Column, Table

# key_..., proj_..., user-..., org-..., svc_acct_..., audit_log-..., guard rule and event ids...
ID = re.compile(r"[a-z][a-z0-9_]*[_-][A-Za-z0-9]{12,}")
# Left out first when the terminal is narrow (then the rightmost columns that are not ids). A project
# id is left out before a key's name or status: commands take the project's name too.
LOW_PRIORITY = (
    "key",
    "last used",
    "kind",
    "actor",
    "project",
    "created",
    "added",
    "expires",
    "note",
    "used",
    "permissions",
)
_MIN_OTHER = 6  # the narrowest a shrinking column gets before columns are dropped
_CELL_OVERHEAD = 3  # one space of padding on each side and one border


def _plain(cell: object) -> str:
    return str(getattr(cell, "plain", cell))


def _header(c: Column) -> str:
    return _plain(c.header)


def is_id_column(c: Column) -> bool:
    cells = [_plain(x) for x in c.cells]
    values = [v for v in cells if v not in ("", "-")]
    return bool(values) and all(ID.fullmatch(v) for v in values)


def fit(t: Table, width: int, drop_first: Sequence[str] = LOW_PRIORITY) -> list[str]:
    """Make ``t`` fit ``width`` columns with its ids whole; returns the headers of the columns left out."""
    ids = {id(c) for c in t.columns if is_id_column(c)}
    for c in t.columns:
        if id(c) in ids:
            c.width = max([len(_header(c)), *(len(_plain(x)) for x in c.cells)])
            c.overflow = "fold"  # if the ids alone are wider than the terminal: fold, never "…"
            c.no_wrap = False
        else:
            c.overflow = "fold"

    def need(cols: list[Column]) -> int:
        total = 1
        for c in cols:
            if id(c) in ids:
                total += (c.width or 0) + _CELL_OVERHEAD
            else:
                longest = max([len(_header(c)), *(len(_plain(x)) for x in c.cells)])
                total += min(longest, max(_MIN_OTHER, min(len(_header(c)), 12))) + _CELL_OVERHEAD
        return total

    dropped: list[str] = []
    cols = list(t.columns)
    order = [c for name in drop_first for c in cols[1:] if _header(c) == name]
    order += [c for c in reversed(cols) if id(c) not in ids and c not in order]
    order += [c for c in reversed(cols[1:]) if id(c) in ids]  # other ids before the first column's
    for c in order:
        if need(cols) <= width or len(cols) == 1:
            break
        cols.remove(c)
        dropped.append(_header(c))
    if dropped:
        t.columns[:] = cols
        t.caption = f"left out at {width} columns: {', '.join(dropped)} (use a wider terminal or --json)"
        t.caption_justify = "left"
    return dropped
