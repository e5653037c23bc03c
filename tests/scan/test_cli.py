"""The command: exit codes, reports (human, JSON, SARIF), ignoring, baselines, usage errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from keyplane import keys
from keyplane.scan.cli import register
from keyplane.scan.rules import RULES
from tests.scan.helpers import SAMPLES, Repo, cli, generic_value, openai_project

DOCS = Path(__file__).parents[2] / "docs" / "scan.md"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    secrets_ = {"kp": keys.generate("proj"), "oa": openai_project(), "gh": SAMPLES["github-token"]()}
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / ".env").write_text(f"KEYPLANE_KEY={secrets_['kp']}\nOPENAI_API_KEY={secrets_['oa']}\n")
    (tmp_path / "app" / "ci.yml").write_text(f"token: {secrets_['gh']}\n")
    (tmp_path / "clean.txt").write_text("nothing here\n")
    return tmp_path, secrets_


def assert_no_secret(text: str, secrets_: dict[str, str]) -> None:
    for value in secrets_.values():
        assert value not in text
        assert value[12:-4] not in text  # not even the middle


def test_exit_codes_and_human_report(tree) -> None:
    root, secrets_ = tree
    result = cli(str(root))
    assert result.exit_code == 1
    out = result.stdout
    assert_no_secret(result.output, secrets_)
    assert "app/.env" in out and "app/ci.yml" in out
    assert f"sk-kp-proj-...{secrets_['kp'][-4:]}" in out
    assert "rotate it at the provider" in out  # OpenAI advice
    assert "3 findings in 2 files" in out
    clean = cli(str(root / "clean.txt"))
    assert clean.exit_code == 0 and "no secrets found" in clean.stdout


def test_json_report(tree) -> None:
    root, secrets_ = tree
    result = cli("--json", str(root))
    assert result.exit_code == 1
    assert_no_secret(result.stdout, secrets_)
    document = json.loads(result.stdout)
    rows = {(f["path"], f["rule_id"], f["line"], f["confidence"]) for f in document["findings"]}
    assert rows == {
        ("app/.env", "keyplane-key", 1, "high"),
        ("app/.env", "openai-project-key", 2, "high"),
        ("app/ci.yml", "github-token", 1, "high"),
    }
    first = document["findings"][0]
    assert first["fingerprint"].startswith("app/.env:keyplane-key:") and first["commit"] is None
    assert document["summary"]["findings"] == 3 and document["summary"]["scanned"] == 3


def test_sarif_report(tree) -> None:
    root, secrets_ = tree
    result = cli("--sarif", str(root))
    assert result.exit_code == 1
    assert_no_secret(result.stdout, secrets_)
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0" and "sarif" in sarif["$schema"]
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in RULES]
    assert all(r["properties"]["security-severity"] for r in rules)
    assert len(run["results"]) == 3
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in {"error", "warning", "note"}
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert not loc["artifactLocation"]["uri"].startswith("/")
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
        assert res["partialFingerprints"]["keyplaneFingerprint/v1"]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].startswith("file://")


def test_stdin(tree) -> None:
    key = keys.generate("svc")
    result = cli("--json", "-", input=f"line one\nK={key}\n".encode())
    assert result.exit_code == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["path"], finding["line"]) == ("<stdin>", 2)
    assert cli("-", input=b"clean\n").exit_code == 0


def test_inline_allow_and_ignore_file(tree) -> None:
    root, secrets_ = tree
    (root / "app" / "ci.yml").write_text(f"token: {secrets_['gh']}  # keyplane:allow\n")
    document = json.loads(cli("--json", str(root)).stdout)
    assert document["summary"]["allowed"] == 1 and len(document["findings"]) == 2
    fp = {f["rule_id"]: f["fingerprint"] for f in document["findings"]}
    # One full fingerprint, one bare secret hash (any path), and a comment.
    bare = fp["openai-project-key"].rsplit(":", 1)[1]
    (root / ".keyplane-scan-ignore").write_text(f"# reviewed\n{fp['keyplane-key']}\n{bare}  # sample key\n")
    result = cli("--json", str(root))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["summary"]["ignored"] == 2
    (root / ".keyplane-scan-ignore").write_text("not a fingerprint\n")
    bad = cli(str(root))
    assert bad.exit_code == 2 and "not a fingerprint" in bad.stderr


def test_baseline_adoption(tree) -> None:
    root, secrets_ = tree
    baseline = root / "scan-baseline.json"
    missing = cli("--baseline", str(baseline), str(root))
    assert missing.exit_code == 2 and "--update-baseline" in missing.stderr
    written = cli("--baseline", str(baseline), "--update-baseline", str(root / "app"))
    assert written.exit_code == 0, written.output
    text = baseline.read_text()
    assert_no_secret(text, secrets_)
    assert len(json.loads(text)["findings"]) == 3
    assert cli("--baseline", str(baseline), str(root / "app")).exit_code == 0
    new_key = keys.generate("proj")
    (root / "app" / "new.py").write_text(f"K = '{new_key}'\n")
    result = cli("--json", "--baseline", str(baseline), str(root / "app"))
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert [f["path"] for f in document["findings"]] == ["new.py"]  # outside git: from the scanned folder
    assert document["summary"]["baselined"] == 3
    baseline.write_text("{}")
    assert cli("--baseline", str(baseline), str(root)).exit_code == 2


def test_exclude_globs(tree) -> None:
    root, _ = tree
    (root / "vendor" / "lib").mkdir(parents=True)
    (root / "vendor" / "lib" / "x.min.js").write_text(keys.generate("proj"))

    def paths(*args: str) -> set[str]:
        return {f["path"] for f in json.loads(cli("--json", *args, str(root)).stdout)["findings"]}

    assert paths() == {"app/.env", "app/ci.yml", "vendor/lib/x.min.js"}
    assert paths("--exclude", "*.min.js") == {"app/.env", "app/ci.yml"}
    assert paths("--exclude", "vendor") == {"app/.env", "app/ci.yml"}
    assert paths("--exclude", "app/**", "--exclude", "vendor/") == set()
    assert paths("--exclude", "*.yml", "--exclude", "v?ndor/l[i]b/*") == {"app/.env"}
    assert paths("--exclude", "app/*.env") == {"app/ci.yml", "vendor/lib/x.min.js"}


def test_min_confidence(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(f'PASSWORD = "{generic_value()}"\nK = "{keys.generate("proj")}"\n')
    low = json.loads(cli("--json", str(tmp_path)).stdout)["findings"]
    high = json.loads(cli("--json", "--min-confidence", "high", str(tmp_path)).stdout)["findings"]
    assert [f["rule_id"] for f in low] == ["generic-secret-assignment", "keyplane-key"]
    assert [f["rule_id"] for f in high] == ["keyplane-key"]


def test_history_and_staged_through_the_cli(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    key = keys.generate("proj")
    commit = repo.commit("add", **{"k.txt": f"{key}\n"})
    repo.commit("remove", **{"k.txt": "gone\n"})
    result = cli("--json", "--history", "--engine", "python", str(repo.path))
    assert result.exit_code == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["path"], finding["commit"]) == ("k.txt", commit)
    human = cli("--history", str(repo.path))
    assert commit[:12] in human.stdout and "1 blob" not in human.stdout
    assert cli("--staged", str(repo.path)).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--staged", "--history"], "cannot be used together"),
        (["--json", "--sarif"], "cannot be used together"),
        (["--update-baseline"], "needs --baseline"),
        (["--verify"], "need --gateway"),
        (["--revoke"], "need --gateway"),
        (["--force"], "only applies to --install-hook"),
        (["--install-hook", "--history"], "cannot be used together"),
        (["-", "."], "must be the only path"),
        (["--staged", "-"], "must be the only path"),
        (["--history", "a", "b"], "takes one repository"),
        (["--min-confidence", "extreme"], "extreme"),
        (["--max-file-size", "0"], "greater than or equal"),
        (["--verify", "--gateway", "http://127.0.0.1:9", "."], "admin key"),
        (["--verify", "--gateway", "ftp://x", "--admin-key", "k", "."], "http(s) URL"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    for args in (["/nonexistent/path"], ["--staged", str(tmp_path)], ["--history", str(tmp_path)]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    proj_key = keys.generate("proj")
    wrong = cli("--verify", "--gateway", "http://127.0.0.1:9", "--admin-key", proj_key, str(tmp_path))
    assert wrong.exit_code == 2 and "admin key" in wrong.output and proj_key not in wrong.output


def test_register_adds_a_scan_command_beside_others(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.command()
    def other() -> None:
        """Another command."""

    register(app)
    assert set(get_command(app).commands) == {"other", "scan"}  # type: ignore[attr-defined]
    (tmp_path / "k").write_text(keys.generate("proj"))
    assert CliRunner().invoke(app, ["scan", str(tmp_path)]).exit_code == 1


def test_every_option_has_help_and_is_documented() -> None:
    app = typer.Typer(add_completion=False)
    register(app)
    command = get_command(app)
    docs = DOCS.read_text()
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, param.name  # type: ignore[attr-defined]
            for opt in param.opts:
                if opt != "--help":
                    assert f"`{opt}" in docs, f"{opt} missing from docs/scan.md"
    help_text = cli("--help").stdout
    assert re.search(r"--staged", help_text) and "KEYPLANE_ADMIN_KEY" in help_text


def test_history_progress_bar_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    import keyplane.scan.cli as scan_cli

    repo = Repo(tmp_path / "r")
    for i in range(3):
        repo.commit(f"c{i}", **{f"f{i}.txt": f"{i}\n"})
    screen = io.StringIO()
    monkeypatch.setattr(scan_cli, "Console", lambda **kw: Console(file=screen, force_terminal=True, width=100))
    assert cli("--history", str(repo.path)).exit_code == 0
    assert "scanning history" in screen.getvalue() and "3/3" in screen.getvalue()


def test_hyperscan_engine_requested_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import keyplane.scan.cli as scan_cli

    monkeypatch.setattr(scan_cli, "hyperscan_available", lambda: False)
    result = cli("--engine", "hyperscan", ".")
    assert result.exit_code == 2 and "not installed" in result.output


def test_control_characters_in_paths_are_not_sent_to_the_terminal(tmp_path: Path) -> None:
    (tmp_path / "evil\x1b[2J.txt").write_text(keys.generate("proj"))
    result = cli(str(tmp_path))
    assert result.exit_code == 1
    assert "\x1b[2J" not in result.stdout and "evil?[2J.txt" in result.stdout


def test_the_tools_own_files_do_not_trigger_findings(tmp_path: Path) -> None:
    secret_dir = tmp_path / "secrets" / "api_token"
    secret_dir.mkdir(parents=True)
    (secret_dir / "password.env").write_text(f"API_KEY={generic_value()}\nTOKEN={keys.generate('proj')}\n")
    baseline = tmp_path / "baseline.json"
    assert cli("--baseline", str(baseline), "--update-baseline", str(tmp_path)).exit_code == 0
    fingerprints = [f["fingerprint"] for f in json.loads(baseline.read_text())["findings"]]
    (tmp_path / ".keyplane-scan-ignore").write_text("\n".join(fingerprints) + "\n")
    result = cli("--json", str(tmp_path))
    assert result.exit_code == 0, result.stdout  # the baseline and the ignore file are clean themselves
    assert json.loads(result.stdout)["summary"]["ignored"] == 2
