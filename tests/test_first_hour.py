"""Issue 14 "The first hour": the CLI, the scripts and the README as a newcomer meets them.

Items 3 (owner in `keys create --json`), 7 (no store created by a command that needs one; scripts/run
initializes whenever there is no organization), 8 (the browser test never skipped silently), 12 (ids
whole at 80 columns), 13 (one way to run the CLI in the README), 14 (scripts/setup says what it does),
and the newcomer walk-through (scripts/walkthrough).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.store import db
from tests.support import make_settings

ROOT = Path(__file__).resolve().parents[1]
KEYPLANE = str(Path(sys.executable).parent / "keyplane")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("KEYPLANE_HOME", str(h))
    monkeypatch.delenv("KEYPLANE_DATABASE_URL", raising=False)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    return h


def run(*args: str, code: int = 0):
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == code, (res.stdout, res.stderr)
    return res


def sh(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}
    )


# --- item 3 ----------------------------------------------------------------------------------------


def test_keys_create_json_names_the_owner_as_the_admin_api_does(home, gateways):
    init = json.loads(run("init", "--owner-email", "boss@acme.test", "--json").stdout)
    made = json.loads(run("keys", "create", "-p", "Default project", "-n", "etl", "--json").stdout)
    owner = made["owner"]
    assert owner["type"] == "user" and owner["user"]["id"] == init["owner_user_id"]
    assert owner["user"]["email"] == "boss@acme.test" and owner["user"]["name"] != "(removed user)"
    assert owner["user"]["role"] == "owner"

    run("users", "add", "dev@acme.test", "--name", "Dev", "--json")
    # A reader can hold a key only in a project they are a member of; the error says how to add them.
    refused = run("keys", "create", "-p", "Default project", "-n", "dev", "--owner", "dev@acme.test", code=1)
    assert "is not a member of project" in refused.stderr
    assert f"keyplane members add {init['project_id']} dev@acme.test" in " ".join(refused.stderr.split())
    run("members", "add", "Default project", "dev@acme.test")
    mine = json.loads(
        run("keys", "create", "-p", "Default project", "-n", "dev", "--owner", "dev@acme.test", "--json").stdout
    )
    assert mine["owner"]["user"]["email"] == "dev@acme.test" and mine["owner"]["user"]["name"] == "Dev"
    for verb in (("suspend", mine["id"]), ("resume", mine["id"]), ("permissions", mine["id"], "read_only")):
        assert json.loads(run("keys", *verb, "--json").stdout)["owner"]["user"]["email"] == "dev@acme.test"
    sa = json.loads(run("keys", "create", "-p", "Default project", "-n", "bot", "--service-account", "--json").stdout)
    assert sa["owner"]["service_account"]["name"] == "bot"

    # The admin API over HTTP says the same of every key.
    listed = {k["id"]: k for k in json.loads(run("keys", "list", "--json").stdout)}
    srv = gateways.start(home=home, init=init)
    r = httpx.get(
        f"{srv.v1}/organization/projects/{init['project_id']}/api_keys?limit=100",
        headers={"Authorization": f"Bearer {init['admin_key']}"},
    )
    assert r.status_code == 200, r.text
    for k in r.json()["data"]:
        assert listed[k["id"]]["owner"] == k["owner"], k["id"]


# --- item 7 ----------------------------------------------------------------------------------------


def test_a_command_before_init_creates_no_store(home):
    res = run("keys", "list", code=1)
    assert "no keyplane store here yet" in res.stderr and "keyplane init" in res.stderr
    assert not (home / "keyplane.db").exists()
    run("projects", "list", code=1)
    assert not (home / "keyplane.db").exists()
    run("init", "--json")  # then init works as on a fresh machine
    assert (home / "keyplane.db").exists()
    assert json.loads(run("keys", "list", "--json").stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_scripts_run_initializes_after_an_earlier_command(tmp_path):
    home = tmp_path / "home"
    env = {"KEYPLANE_HOME": str(home), "KEYPLANE_DATABASE_URL": "", "KEYPLANE_CONFIG": ""}
    before = sh(KEYPLANE, "keys", "list", env=env)
    assert before.returncode == 1 and "no keyplane store here yet" in before.stderr
    assert not home.exists()
    # An older keyplane left an empty store behind: scripts/run must initialize all the same.
    settings = make_settings(home)

    async def migrate() -> None:
        engine = db.make_engine(settings.database_url)
        await db.migrate(engine)
        await engine.dispose()

    asyncio.run(migrate())
    assert (home / "keyplane.db").exists()
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "run"), "--port", str(port)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while "keyplane serving on" not in seen:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, seen
            seen += line
            assert time.monotonic() < deadline, seen
        assert "keyplane initialized" in seen and "no organization yet" not in seen
        assert f"http://127.0.0.1:{port}/v1" in seen and ":8080" not in seen  # init's next steps: the port served
        key = re.search(r"sk-kp-svc-\S+", seen)
        assert key, seen
        url = f"http://127.0.0.1:{port}/v1/models"
        while True:
            try:
                r = httpx.get(url, headers={"Authorization": f"Bearer {key.group(0)}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and "demo-echo" in r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_init_prints_the_port_serve_will_use(home, monkeypatch):
    """`scripts/run --port 18777` runs init --port, then serve --port: the URL init prints is the one served."""
    res = run("init", "--port", "18777")
    assert "http://127.0.0.1:18777/v1" in res.stdout and "8080" not in res.stdout
    assert "`keyplane serve --port 18777`" in " ".join(res.stdout.split())


def test_init_reads_the_port_setting(home, monkeypatch):
    monkeypatch.setenv("KEYPLANE_PORT", "18778")
    res = run("init")
    assert "http://127.0.0.1:18778/v1" in res.stdout and "8080" not in res.stdout


# --- item 12 ---------------------------------------------------------------------------------------


def test_ids_are_whole_at_80_columns(home):
    run("init", "--json")
    run("projects", "create", "A project with a rather long name", "--json")
    run(
        "keys",
        "create",
        "-p",
        "A project with a rather long name",
        "-n",
        "a-key-with-a-long-name",
        "--permissions",
        "api.model.request,api.model.read,api.files.read",
        "--json",
    )
    env = {"COLUMNS": "80", "KEYPLANE_HOME": str(home)}
    keys = json.loads(sh(KEYPLANE, "keys", "list", "--json", env=env).stdout)
    projects = json.loads(sh(KEYPLANE, "projects", "list", "--json", env=env).stdout)
    users = json.loads(sh(KEYPLANE, "users", "list", "--json", env=env).stdout)
    for cmd, ids in (
        (("keys", "list"), [k["id"] for k in keys]),
        (("projects", "list"), [p["id"] for p in projects]),
        (("users", "list"), [u["id"] for u in users]),
        (("audit",), [k["id"] for k in keys]),
    ):
        res = sh(KEYPLANE, *cmd, env=env)
        assert res.returncode == 0, res.stderr
        assert max(len(line) for line in res.stdout.splitlines()) <= 80, res.stdout
        for i in ids:
            assert i in res.stdout, (cmd, i, res.stdout)  # whole, on one line
        assert "…" not in res.stdout
    narrow = sh(KEYPLANE, "keys", "list", env=env).stdout
    assert "left out at 80 columns" in narrow and "--json" in narrow  # says what it left out
    wide = sh(KEYPLANE, "keys", "list", env={**env, "COLUMNS": "200"}).stdout
    assert "left out" not in wide and "last used" in wide


# --- item 13 ---------------------------------------------------------------------------------------


def test_readme_runs_the_cli_one_way():
    text = (ROOT / "README.md").read_text()
    commands, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:]
        elif fence in ("sh", "bash", "") and "keyplane " in line:
            commands.append(line.strip())
    assert commands
    for line in commands:
        if line.startswith(("export", "#", "./scripts")):
            continue
        assert line.startswith(".venv/bin/keyplane "), line
    prose = "\n".join(line for line in text.splitlines() if not line.startswith(("|", "```")))
    told = re.findall(r"`(keyplane [a-z][^`\n]*)`", prose)  # "run `keyplane ...`" without the path
    assert not told, told
    assert "source .venv/bin/activate" in text


# --- item 14 ---------------------------------------------------------------------------------------


def test_setup_says_what_it_installs(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    calls = tmp_path / "calls"
    (bin_ / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # pip, stubbed
    (bin_ / "python").chmod(0o755)
    res = subprocess.run([str(tmp_path / "scripts" / "setup")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "installing keyplane and its dependencies" in res.stderr and "about a minute" in res.stderr
    assert "source .venv/bin/activate" in res.stderr
    assert "install -q -e .[dev]" in calls.read_text()
    again = subprocess.run([str(tmp_path / "scripts" / "setup")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stderr == ""  # nothing to do, nothing said


# --- item 8 ----------------------------------------------------------------------------------------


def test_missing_chromium_is_said_loudly():
    env = {"KEYPLANE_CHROMIUM": "/nonexistent/chromium", "KEYPLANE_NO_APT": "1"}
    res = sh(str(ROOT / "scripts" / "chromium"), env=env)
    assert res.returncode == 0
    assert "SKIPPED" in res.stderr and "tests/web/test_browser.py" in res.stderr
    assert "apt-get install -y --no-install-recommends chromium" in res.stderr
    assert sh(str(ROOT / "scripts" / "chromium"), "--require", env=env).returncode == 1
    assert "scripts/chromium" in (ROOT / "scripts" / "test").read_text()


# --- the walk-through --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.node
def test_walkthrough(tmp_path):
    if not shutil.which("node") or not os.path.exists("/usr/bin/chromium"):
        pytest.skip("the walk-through needs Node.js and /usr/bin/chromium (scripts/chromium installs it as root)")
    res = sh(str(ROOT / "scripts" / "walkthrough"), env={"KEYPLANE_WALKTHROUGH_DIR": str(tmp_path)}, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for step in (
        "keyplane initialized",
        "Python SDK: You said: hello from Python",
        "Node SDK: You said: hello from Node",
        "dashboard: signed in",
        "walk-through passed",
    ):
        assert step in out, (step, out)
    assert (tmp_path / "dashboard.png").exists()
