"""The CLI against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keyplane import keys
from keyplane.cli import app


@pytest.fixture
def cli(tmp_path, database_url, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    run.home = home  # type: ignore[attr-defined]
    run.database_url = database_url  # type: ignore[attr-defined]
    return run


def _json(res):
    return json.loads(res.stdout)


def test_init_once(cli):
    out = _json(cli("init", "--org-name", "Acme", "--owner-email", "boss@acme.test", "--json"))
    for field in ("organization_id", "owner_user_id", "project_id", "api_key", "admin_key"):
        assert out[field]
    assert keys.parse(out["api_key"]) == "svc" and keys.parse(out["admin_key"]) == "admin"
    assert (cli.home / "keyplane.toml").exists() and (cli.home / "secret.key").exists()
    res = cli("init", code=1)
    assert "already initialized" in res.stderr and out["api_key"] not in res.stderr + res.stdout
    assert "`keyplane keys create-admin`" in " ".join(res.stderr.split())


def test_a_lost_admin_key_is_replaced_from_the_cli(cli):
    """init's admin key is shown once; whoever runs the CLI on the store can make another (the admin API's own
    route needs an admin key to start with)."""
    first = _json(cli("init", "--json"))
    made = _json(cli("keys", "create-admin", "--name", "recovery", "--json"))
    assert keys.parse(made["value"]) == "admin" and made["value"] != first["admin_key"]
    listed = {k["id"]: k for k in _json(cli("keys", "list", "--admin", "--json"))}
    assert made["id"] in listed and listed[made["id"]]["name"] == "recovery"
    reader = _json(cli("keys", "create-admin", "--name", "auditor", "--role", "reader", "--json"))
    assert keys.parse(reader["value"]) == "admin"
    assert "--role must be owner or reader" in cli("keys", "create-admin", "-n", "x", "--role", "god", code=1).stderr
    assert made["value"] not in cli("audit", "--json").stdout  # the value is never kept nor logged


def test_version(cli):
    from keyplane import __version__

    assert cli("--version").stdout.strip() == f"keyplane {__version__}"


def test_help_paragraphs_are_one_line_each():
    """typer's rich help keeps a docstring's hard line breaks (ragged lines in --help and the command lists): every
    command's help is its paragraphs, each on one line."""
    import typer.main

    def walk(cmd: Any) -> list[Any]:  # (typer's own click: its Group is not click's)
        return [cmd, *(c for s in getattr(cmd, "commands", {}).values() for c in walk(s))]

    commands = walk(typer.main.get_command(app))
    assert len(commands) > 50
    for cmd in commands:
        for paragraph in (cmd.help or "").split("\n\n"):
            assert "\n" not in paragraph, (cmd.name, paragraph)


def test_commands_need_init(cli):
    res = cli("projects", "list", code=1)
    assert "keyplane init" in res.stderr


def test_projects_of_one_name(cli):
    """Two active projects of one name: the second is created with a warning, the name then answers with their
    ids; once one is archived, the name is the active one's again."""
    cli("init", "--json")
    a = _json(cli("projects", "create", "Data team", "--json"))
    res = cli("projects", "create", "Data team", "--json")
    b = _json(res)
    assert "warning" in res.stderr and a["id"] in res.stderr
    res = cli("keys", "create", "-p", "Data team", "-n", "etl", code=1)
    assert a["id"] in res.stderr and b["id"] in res.stderr
    cli("projects", "archive", b["id"], "--json")
    k = _json(cli("keys", "create", "-p", "Data team", "-n", "etl", "--json"))
    assert k["project_id"] == a["id"]


def test_projects_keys_users_audit(cli):
    cli("init", "--json")
    p = _json(cli("projects", "create", "Data team", "--json"))
    assert [x["name"] for x in _json(cli("projects", "list", "--json"))] == ["Default project", "Data team"]
    k = _json(
        cli(
            "keys",
            "create",
            "-p",
            "Data team",
            "-n",
            "etl",
            "--permissions",
            "api.model.request,api.files.read",
            "--expires-in",
            "3600",
            "--json",
        )
    )
    assert keys.parse(k["value"]) == "proj" and k["expires_at"]
    assert "api.files.read" in k["permissions"]
    listed = _json(cli("keys", "list", "-p", p["id"], "--json"))
    assert [x["id"] for x in listed] == [k["id"]] and "value" not in listed[0]
    upd = _json(cli("keys", "permissions", k["id"], "read_only", "--json"))
    assert upd["permissions"] == "read_only"
    sus = _json(cli("keys", "suspend", k["id"], "--reason", "why", "--json"))
    assert sus["status"] == "suspended"
    assert _json(cli("keys", "resume", k["id"], "--json"))["status"] == "active"
    rot = _json(cli("keys", "rotate", k["id"], "--json"))
    assert rot["value"] != k["value"] and rot["name"] == "etl"
    rev = _json(cli("keys", "revoke", rot["id"], "--reason", "done", "--json"))
    assert rev["status"] == "revoked" and rev["revoke_reason"] == "done"
    assert _json(cli("keys", "list", "-p", p["id"], "--json")) == []
    assert len(_json(cli("keys", "list", "-p", p["id"], "--all", "--json"))) == 2
    sa = _json(cli("keys", "create", "-p", p["id"], "-n", "bot", "--service-account", "--json"))
    assert keys.parse(sa["value"]) == "svc" and sa["owner"]["type"] == "service_account"
    assert len(_json(cli("keys", "list", "--admin", "--json"))) == 1
    u = _json(cli("users", "add", "r@x.test", "--role", "reader", "--json"))
    assert _json(cli("users", "role", "r@x.test", "owner", "--json"))["role"] == "owner"
    assert len(_json(cli("users", "list", "--json"))) == 2
    cli("users", "remove", u["id"])
    archived = _json(cli("projects", "archive", "Data team", "--json"))
    assert archived["status"] == "archived"
    audit = _json(cli("audit", "--json", "--limit", "200"))
    types = [a["type"] for a in audit]
    for t in (
        "project.created",
        "api_key.created",
        "api_key.updated",
        "api_key.suspended",
        "api_key.resumed",
        "api_key.deleted",
        "user.added",
        "user.updated",
        "user.deleted",
        "project.archived",
        "service_account.created",
    ):
        assert t in types, t
    assert all(a["actor"]["type"] == "cli" for a in audit)
    assert _json(cli("audit", "--json", "--type", "project.archived"))[0]["project"]["id"] == p["id"]
    # human output also works
    assert "Data team" in cli("projects", "list", "--all").stdout
    assert "etl" in cli("keys", "list", "--all").stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("keys", "create", "-p", "nope", "-n", "x"), "No project found"),
        (("keys", "create", "-p", "Default project", "-n", "x", "--permissions", "api.nope.read"), "unknown scope"),
        (
            ("keys", "create", "-p", "Default project", "-n", "x", "--permissions", "readonly"),
            "Did you mean 'read_only'",
        ),
        (("keys", "revoke", "key_missing"), "No API key found"),
        (("users", "add", "not-an-email"), "email"),
        (("users", "role", "owner@example.com", "reader"), "at least one owner"),
        (("projects", "create", "x" * 300), "too long"),
    ],
)
def test_errors_are_messages(cli, args, needle):
    cli("init", "--json")
    res = cli(*args, code=1)
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_bad_config_exit_2(cli):
    cli.home.mkdir(parents=True)
    (cli.home / "keyplane.toml").write_text("port = 'x'\n")
    res = cli("projects", "list", code=2)
    assert "`port` must be int" in res.stderr


def test_cli_revocation_reaches_running_server_within_a_second(cli, gateways):
    init = _json(cli("init", "--json"))
    srv = gateways.start(home=cli.home, store=cli.database_url, init=init)
    h = {"Authorization": f"Bearer {init['admin_key']}"}
    assert httpx.get(srv.v1 + "/organization/projects", headers=h).status_code == 200
    cli("keys", "revoke", init["admin_key_id"])
    t0 = time.monotonic()
    while httpx.get(srv.v1 + "/organization/projects", headers=h).status_code == 200:
        assert time.monotonic() - t0 < 1.0, "revocation did not reach the server within a second"
        time.sleep(0.02)


def test_help_everywhere():
    runner = CliRunner()
    for args in (
        ["--help"],
        ["init", "--help"],
        ["serve", "--help"],
        ["projects", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["users", "--help"],
        ["audit", "--help"],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.stdout


def test_serve_refuses_workers_without_redis_unless_told_the_limits_are_unshared(cli, monkeypatch):
    """Several workers without Redis would each enforce every limit on its own (N times a hard spend limit):
    refused (exit 2, nothing started) unless --unshared-limits says so, then a warning."""
    import os

    cli("init", "--json")
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    monkeypatch.delenv("KEYPLANE_REDIS_URL", raising=False)
    res = cli("serve", "--workers", "2", "--port", "18999", code=2)
    assert "2x the limits" in res.stderr and "--unshared-limits" in res.stderr and not calls
    res = cli("serve", "--workers", "2", "--port", "18999", "--unshared-limits")
    assert "warning" in res.stderr and "2x the limits" in res.stderr
    assert calls and calls[0][calls[0].index("--workers") + 1] == "2"
    monkeypatch.setenv("KEYPLANE_REDIS_URL", "redis://127.0.0.1:6379/0")
    res = cli("serve", "--workers", "2", "--port", "18999")
    assert "x the limits" not in res.stderr


def test_serve_hands_its_settings_to_the_serving_process_on_its_command_line(cli, monkeypatch, tmp_path):
    """`keyplane serve` becomes `python -m keyplane.serving` (os.execv: the same process) with the config,
    host, port and workers it resolved as arguments; it sets no variable for it."""
    import os
    import sys

    from keyplane import serving

    cli("init", "--json")
    cfg = cli.home / "keyplane.toml"
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    from keyplane.cli import init as init_cli

    monkeypatch.setattr(init_cli, "_cannot_listen", lambda host, port: None)  # the default 8080 may be taken here
    before = {k: v for k, v in os.environ.items() if k.startswith("KEYPLANE_")}
    res = cli(
        "--config", str(cfg), "serve", "--host", "127.0.0.2", "--port", "18998", "--workers", "3", "--unshared-limits"
    )
    assert "keyplane serving on http://127.0.0.2:18998" in res.stderr
    [(path, argv)] = calls
    assert path == sys.executable and argv[:3] == [sys.executable, "-m", "keyplane.serving"]
    opts = serving.parse_args(argv[3:])
    assert opts == serving.ServeOptions(config=str(cfg), host="127.0.0.2", port=18998, workers=3)
    assert {k: v for k, v in os.environ.items() if k.startswith("KEYPLANE_")} == before
    calls.clear()
    cli("serve")  # no options: the settings' host and port, one worker, the default keyplane.toml
    opts = serving.parse_args(calls[0][1][3:])
    assert opts.config is None and opts.workers == 1 and opts.host and opts.port


def test_serve_on_a_port_in_use_says_so_in_one_line(cli, monkeypatch):
    """Not uvicorn's bare "[Errno 98] address already in use" (and a traceback): exit 2, one line naming the port
    and how to pick another, nothing started."""
    import os
    import socket

    cli("init", "--json")
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cli("serve", "--host", "127.0.0.1", "--port", str(port), code=2)
    assert not calls
    [line] = res.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line
    assert "Traceback" not in res.stderr and "Errno" not in res.stderr
    res = cli("serve", "--host", "127.0.0.1", "--port", str(port))  # free again: started
    assert calls and f"keyplane serving on http://127.0.0.1:{port}" in res.stderr


@pytest.mark.parametrize("depth", [1, 5, 9])
def test_an_error_is_one_line_whatever_its_length(tmp_path, monkeypatch, depth):
    """scripts/run matches "keyplane init" in the error: a console wrap must not split it."""
    home = tmp_path.joinpath(*["d" * depth] * depth)
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    r = CliRunner().invoke(app, ["projects", "list", "--json"])
    assert r.exit_code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "no keyplane store here yet" in line and "run `keyplane init`" in line
