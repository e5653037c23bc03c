"""Match a found provider key against mirrored redacted values, on the machine that found it.

OpenAI shows a key as a prefix, stars or an ellipsis, and a suffix (``sk-proj-****...WXYZ``). The
scanner sends the gateway only the found key's last four characters (already public in the redacted
form) and checks the prefix and suffix locally: the key itself never leaves the machine. A suffix of four
characters is not unique: only a single match is acted on (``--revoke``); several are reported.
"""

from __future__ import annotations

import re
from typing import Any

_SPLIT = re.compile(r"\*+|\.\.\.|…")
SUFFIX_LEN = 4


def parts(redacted: str) -> tuple[str, str] | None:
    """(head, tail) of a redacted value, or None when it is not one (no mask, or nothing on either side)."""
    pieces = [p for p in _SPLIT.split(redacted) if p]
    if not _SPLIT.search(redacted) or len(pieces) != 2:
        return None
    return pieces[0], pieces[1]


def matches(secret: str, redacted: str) -> bool:
    p = parts(redacted)
    if p is None:
        return False
    head, tail = p
    return len(secret) > len(head) + len(tail) and secret.startswith(head) and secret.endswith(tail)


def candidates(secret: str, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mirrored keys (``redacted_value``) this found secret can be."""
    return [k for k in keys if isinstance(k.get("redacted_value"), str) and matches(secret, k["redacted_value"])]
