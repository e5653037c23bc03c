"""The tables of docs/configuration.md, generated from the settings' one declaration.

    python -m keyplane.config_docs            # print the tables
    python -m keyplane.config_docs --write    # rewrite them in docs/configuration.md
    python -m keyplane.config_docs --check    # exit 1 when the docs differ (tests/test_config_docs.py)

Each table sits between two marker comments naming it; everything outside them is written by hand.
The flat settings come from their :func:`keyplane.configspec.setting` declarations; a section's fields
(``[[upstreams]]``) from its msgspec struct, each field's doc line being the string under it.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from keyplane.config import SETTINGS, Upstream

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def settings_markdown() -> str:
    rows = ["| setting (keyplane.toml) | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(empty)" if s.default in ("", b"") else f"`{s.default}`"
        rows.append(f"| `{s.name}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows)


def field_docs(struct: type) -> dict[str, str]:
    """The doc line of each field of ``struct``: the string literal right under the field."""
    body = ast.parse(inspect.getsource(struct)).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    for field, doc in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            out[field.target.id] = " ".join(doc.value.value.split())
    return out


def fields_markdown(struct: type) -> str:
    docs = field_docs(struct)
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in msgspec.structs.fields(struct):
        if f.required:
            default = "(required)"
        else:
            value = f.default if f.default_factory is msgspec.NODEFAULT else f.default_factory()
            default = f"`{json.dumps(value)}`"
        rows.append(f"| `{f.encode_name}` | {default} | {docs.get(f.name, '')} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {
    "settings": settings_markdown,
    "upstreams": lambda: fields_markdown(Upstream),
}


def begin(name: str) -> str:
    return f"<!-- begin generated table `{name}`: python -m keyplane.config_docs --write; do not edit -->"


def end(name: str) -> str:
    return f"<!-- end generated table `{name}` -->"


def render(text: str) -> str:
    """``text`` (the docs page) with every table between its markers regenerated."""
    for name, table in TABLES.items():
        head, sep, rest = text.partition(begin(name))
        _, sep2, tail = rest.partition(end(name))
        if not sep or not sep2:
            raise ValueError(f"the markers of table {name!r} are missing: {begin(name)} ... {end(name)}")
        text = f"{head}{begin(name)}\n{table()}\n{end(name)}{tail}"
    return text


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DOCS.write_text(render(DOCS.read_text("utf-8")), "utf-8")
    elif "--check" in argv:
        text = DOCS.read_text("utf-8")
        if render(text) != text:
            print(f"{DOCS} is out of date: run python -m keyplane.config_docs --write", file=sys.stderr)
            return 1
    else:
        print("\n\n".join(table() for table in TABLES.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
