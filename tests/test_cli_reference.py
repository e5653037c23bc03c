"""docs/cli-reference.md is the `--help` of every command as it is now (scripts/cli_reference.py writes it)."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cli_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cli_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_cli_reference_matches_the_commands() -> None:
    gen = _generator()
    want, have = gen.render(), gen.DOCS.read_text() if gen.DOCS.exists() else ""
    diff = "".join(
        difflib.unified_diff(have.splitlines(True), want.splitlines(True), "docs/cli-reference.md", "--help", n=1)
    )
    assert not diff, f"docs/cli-reference.md is out of date: run .venv/bin/python scripts/cli_reference.py\n{diff}"


def test_every_command_is_in_the_reference() -> None:
    from typer.main import get_command

    from keyplane.cli import app

    gen = _generator()
    paths = list(gen.commands(get_command(app)))
    assert ("keys", "create") in paths and ("access", "ip-allowlist", "clear") in paths and ("serve",) in paths
    text = gen.render()
    for p in paths:
        assert f"## {' '.join(('keyplane', *p))}\n" in text
        assert f"Usage: {' '.join(('keyplane', *p))}" in " ".join(text.split())
