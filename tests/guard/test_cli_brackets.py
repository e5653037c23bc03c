"""CLI output shows brackets as written: Rich markup never eats user or config content (#14.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from keyplane.cli import app


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", "")
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_test_alert_without_sinks_names_the_toml_table(run) -> None:
    assert run("init").exit_code == 0
    res = run("guard", "test-alert")
    assert res.exit_code == 1
    assert "add [[alerts.sinks]] to keyplane.toml" in res.output


def test_names_with_brackets_are_printed_as_written(run) -> None:
    assert run("init").exit_code == 0
    for name in ("[bold]launch[/bold]", "team [red]", "[[x]]"):
        created = run("projects", "create", name)
        assert created.exit_code == 0 and f"({name})" in created.output
        listed = run("projects", "list")
        assert name in listed.output, listed.output
    created = run("keys", "create", "--project", "[[x]]", "--name", "[link=http://evil]k[/link]")
    assert created.exit_code == 0, created.output
    assert "([link=http://evil]k[/link])" in created.output
    listed = run("keys", "list")
    assert "[link=http://evil]k[/link]" in listed.output


def test_error_messages_keep_their_brackets(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "[keyplane]"
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    res = run("projects", "list")  # no organization yet: the message names the home, brackets and all
    assert res.exit_code == 1
    assert str(home) in res.output.replace("\n", "")  # "[keyplane]" shown, not taken for a style
