"""Docs kept honest: every admin endpoint and CLI command is documented."""

from __future__ import annotations

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
