"""Docs kept honest: every admin endpoint and CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from keyplane.admin import ENDPOINTS
from keyplane.cli import app

DOCS = Path(__file__).parents[1] / "docs"


def test_every_core_admin_endpoint_is_documented():
    text = (DOCS / "admin-api.md").read_text()
    for e in ENDPOINTS:
        assert f"| {e.method} | `{e.path}` |" in text, f"{e.method} {e.path} missing from docs/admin-api.md"


def test_every_cli_command_is_documented():
    # In prose: docs/cli-reference.md, generated from --help (tests/test_cli_reference.py), names them all.
    lines = [line for p in DOCS.glob("*.md") if p.name != "cli-reference.md" for line in p.read_text().splitlines()]
    group = get_command(app)
    missing = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        mentions = [line for line in lines if f"keyplane {name}" in line]
        for sub in subs or [None]:
            if not any(sub is None or sub in line for line in mentions):
                missing.append(f"keyplane {name} {sub or ''}".strip())
    assert not missing, f"undocumented commands: {missing}"


ROOT = Path(__file__).parents[1]
_MENTION = re.compile(r"`(?:\.venv/bin/)?keyplane ([^`]*)`")


def _mentions() -> list[tuple[str, str]]:
    """(where, words after `keyplane`) of every command named in backticks in the docs, the README and the
    source's strings (the fixes error messages and `keyplane doctor` suggest), and of every line of a fenced
    block in the docs that runs keyplane."""
    out: list[tuple[str, str]] = []
    files = [*DOCS.glob("*.md"), ROOT / "README.md", *(ROOT / "src" / "keyplane").rglob("*.py")]
    for p in files:
        if p.name == "cli-reference.md":
            continue
        fenced = False
        for n, line in enumerate(p.read_text().splitlines(), 1):
            where = f"{p.relative_to(ROOT)}:{n}"
            out.extend((where, m) for m in _MENTION.findall(line))
            if p.suffix == ".md" and line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced and (cmd := line.strip().removeprefix("$ ").removeprefix(".venv/bin/")).startswith("keyplane "):
                out.append((where, cmd[len("keyplane ") :]))
    return out


def test_every_command_the_docs_and_messages_name_exists():
    """A fix that names a command that does not exist (`keyplane credit add`, `keyplane keys update`) sends its
    reader to "No such command": every subcommand path named anywhere resolves in the CLI."""
    root = get_command(app)
    wrong = []
    for where, words in _mentions():
        cmd = root
        for word in words.split():
            subs = getattr(cmd, "commands", None)  # a group (typer's own click, not necessarily the click package's)
            if subs is None or not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break  # a leaf's arguments and options, or a placeholder (KEY_ID, "name", ...)
            sub = subs.get(word)
            if sub is None:
                wrong.append(f"{where}: keyplane {words}")
                break
            cmd = sub
    assert not wrong, "commands that do not exist:\n" + "\n".join(wrong)
