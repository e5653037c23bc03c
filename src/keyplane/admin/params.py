"""Query parameters of the admin, usage, billing and kill-switch APIs: one parser per kind, bounded.

Every integer a client puts in a query string goes through :func:`query_int` (or its two shapes,
:func:`query_limit` and :func:`query_timestamp`) before it reaches SQL, ``struct`` or arithmetic: a
number of at most 20 digits, within the bounds the parameter takes, else a 400 ``invalid_value`` in
OpenAI's error shape naming the parameter. ``int()`` on a raw query value appears nowhere else, so no
value (``10**30``, ``-1``, ``abc``, 5,000 digits) can end in an OverflowError, a ``struct.error`` or a
500.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from starlette.requests import Request

from keyplane import errors

# 9999-12-31T23:59:59Z: a later unix time is a mistake (and fits a BIGINT and a struct "q" with room).
MAX_TIMESTAMP: Final = 253_402_300_799
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,20}")
_SHOWN: Final = 40


def _shown(raw: str) -> str:
    text = raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "..."
    return "".join(c if c.isprintable() else "?" for c in text)


def parse_int(raw: str, name: str, minimum: int, maximum: int) -> int:
    """``raw`` as an integer in [minimum, maximum], or a 400 naming ``name``."""
    value = raw.strip()
    if not _INTEGER.fullmatch(value):
        raise errors.invalid_value(
            name, f"Invalid '{name}': expected an integer from {minimum} to {maximum}, got '{_shown(raw)}'."
        )
    n = int(value)
    if not minimum <= n <= maximum:
        raise errors.invalid_value(name, f"Invalid '{name}': must be from {minimum} to {maximum}, got '{_shown(raw)}'.")
    return n


def query_int(
    request: Request, name: str, *, minimum: int, maximum: int, default: int | None = None, required: bool = False
) -> int | None:
    """The integer query parameter ``name`` (``default`` when absent or empty)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise errors.bad_request(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
        return default
    return parse_int(raw, name, minimum, maximum)


def query_limit(request: Request, default: int, maximum: int, name: str = "limit") -> int:
    """A page size: 1 to ``maximum``."""
    n = query_int(request, name, minimum=1, maximum=maximum)
    return default if n is None else n


def query_timestamp(request: Request, name: str, *, required: bool = False) -> int | None:
    """A unix time in seconds: 0 to :data:`MAX_TIMESTAMP`."""
    return query_int(request, name, minimum=0, maximum=MAX_TIMESTAMP, required=required)


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    """``true`` or ``false`` (any case); anything else is a 400, not a silent default."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise errors.invalid_value(name, f"Invalid '{name}': expected true or false, got '{_shown(raw)}'.")
    return value == "true"


def query_choice(request: Request, name: str, choices: Iterable[str], default: str) -> str:
    """One of ``choices`` (``default`` when absent or empty)."""
    allowed = tuple(choices)
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise errors.invalid_value(
            name, f"Invalid '{name}': expected one of {', '.join(allowed)}, got '{_shown(raw)}'."
        )
    return raw
