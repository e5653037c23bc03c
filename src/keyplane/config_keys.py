"""Unknown keys in keyplane.toml: the first one found, with its line and the nearest valid name.

:func:`unknown_key` walks the parsed file against the sections' msgspec schemas (any depth:
``[limits]``, ``[[guard.rules]]``, ``[tiers.rate_limits."gpt-*"]``...) before msgspec converts it, so
a typo is reported as ``line 7: unknown key `$.guard.rules[0].thresold`; did you mean `threshold`?``
rather than as msgspec's bare "unknown field". tomllib gives no positions: :func:`line_of` finds the
line by reading the table headers and keys of the text (a key inside an inline table gets no line).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import msgspec.inspect as mi

KeyPath = tuple[str | int, ...]  # keys and array indexes from the top of the file


def _dotted(path: KeyPath) -> str:
    out = "$"
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p):
            out += f".{p}"
        else:
            out += f'."{p}"'
    return out


def _walk(data: Any, t: mi.Type, path: KeyPath) -> tuple[KeyPath, list[str]] | None:
    if isinstance(t, mi.StructType) and isinstance(data, dict):
        fields = {f.encode_name: f.type for f in t.fields}
        for key, value in data.items():
            if key not in fields:
                return (*path, key), sorted(fields)
            if found := _walk(value, fields[key], (*path, key)):
                return found
    elif isinstance(t, mi.ListType) and isinstance(data, list):
        for i, item in enumerate(data):
            if found := _walk(item, t.item_type, (*path, i)):
                return found
    elif isinstance(t, mi.DictType) and isinstance(data, dict):
        for key, value in data.items():
            if found := _walk(value, t.value_type, (*path, key)):
                return found
    elif isinstance(t, mi.UnionType):
        for sub in t.types:
            if found := _walk(data, sub, path):
                return found
    return None


def unknown_key(data: dict[str, Any], schema: type, flat: Iterable[str], text: str) -> str | None:
    """The first key of ``data`` that ``schema`` (or, at the top, the flat settings ``flat``) does not know."""
    top = mi.type_info(schema)
    assert isinstance(top, mi.StructType)
    flat = set(flat)
    valid = {f.encode_name for f in top.fields} | flat
    typo = next((k for k in data if k not in valid), None)
    sections = {k: v for k, v in data.items() if k not in flat}
    found = ((typo,), sorted(valid)) if typo else _walk(sections, top, ())
    if found is None:
        return None
    path, names = found
    line = line_of(text, path)
    where = f"line {line}: " if line else ""
    msg = f"{where}unknown key `{_dotted(path)}`"
    close = difflib.get_close_matches(str(path[-1]), names, n=1)
    return msg + (f"; did you mean `{close[0]}`?" if close else f" (valid: {', '.join(names)})")


_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"\s*{_KEY}(?:\s*\.\s*{_KEY})*\s*"
_HEADER = re.compile(rf"^\s*(\[\[?)({_DOTTED})\]\]?")
_ASSIGN = re.compile(rf"^({_DOTTED})=")


def _keys(dotted: str) -> list[str]:
    return [k[1:-1] if k[:1] in "\"'" else k for k in re.findall(_KEY, dotted)]


def line_of(text: str, path: KeyPath) -> int | None:
    """The 1-based line defining ``path`` (a table header or a key), or None when not found."""
    want = list(path)
    aot: dict[tuple[str, ...], int] = {}  # array-of-tables header -> its current index
    table: list[str | int] = []
    for n, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            keys = _keys(m.group(2))
            table = []
            for i, k in enumerate(keys):
                table.append(k)
                prefix = tuple(keys[: i + 1])
                if m.group(1) == "[[" and i == len(keys) - 1:
                    aot[prefix] = aot.get(prefix, -1) + 1
                if prefix in aot:
                    table.append(aot[prefix])
            if table == want or (m.group(1) == "[[" and table[:-1] == want):
                return n
        elif (m := _ASSIGN.match(line)) and table + _keys(m.group(1)) == want:
            return n
    return None
