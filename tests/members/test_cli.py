"""`keyplane invites` and `keyplane members` against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from keyplane.cli import app


@pytest.fixture
def cli(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("KEYPLANE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    return run


def test_invites_and_members(cli):
    init = json.loads(cli("init", "--json").stdout)
    pid = init["project_id"]
    res = cli("invites", "create", "new@example.com", "--project", f"{pid}:owner", "--base-url", "https://kp.test/")
    assert "https://kp.test/invite/kpinv_" in res.stdout
    listed = json.loads(cli("invites", "list", "--json").stdout)
    assert [(i["email"], i["status"], i["projects"]) for i in listed] == [
        ("new@example.com", "pending", [{"id": pid, "role": "owner"}])
    ]
    cli("invites", "delete", listed[0]["id"])
    assert json.loads(cli("invites", "list", "--json").stdout) == []
    cli("invites", "create", "x@example.com", "--role", "emperor", code=1)

    cli("users", "add", "dev@example.com")
    added = json.loads(cli("members", "add", pid, "dev@example.com", "--json").stdout)
    assert added["object"] == "organization.project.user" and added["role"] == "member"
    key = json.loads(
        cli("keys", "create", "--project", pid, "--name", "dev", "--owner", "dev@example.com", "--json").stdout
    )
    assert [m["email"] for m in json.loads(cli("members", "list", pid, "--json").stdout)] == ["dev@example.com"]
    assert "1 key(s) revoked" in cli("members", "remove", pid, "dev@example.com").stdout
    keys_now = json.loads(cli("keys", "list", "--project", pid, "--json", "--all").stdout)
    assert {k["id"]: k["status"] for k in keys_now}[key["id"]] == "revoked"
    for args in (["invites", "--help"], ["invites", "create", "--help"], ["members", "--help"]):
        assert "Usage" in CliRunner().invoke(app, args).stdout
