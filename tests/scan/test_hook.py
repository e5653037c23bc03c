"""Pre-commit: the plain git hook blocks a real `git commit`, and the pre-commit framework's
hook definitions run the scanner the way pre-commit would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keyplane import keys
from keyplane.scan.hook import HOOK_MARKER
from tests.scan.helpers import Repo, cli, rnd

HOOKS_YAML = Path(__file__).parents[2] / ".pre-commit-hooks.yaml"


def _commit(repo: Repo, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo.path), "commit", "-m", message], capture_output=True, text=True, check=False
    )


def test_hook_blocks_a_commit_that_adds_a_key_then_lets_it_through(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    repo.commit("start", **{"README.md": "hello\n"})
    result = cli("--install-hook", str(repo.path))
    assert result.exit_code == 0, result.output
    hook = repo.path / ".git" / "hooks" / "pre-commit"
    assert HOOK_MARKER in hook.read_text() and os.access(hook, os.X_OK)

    key = keys.generate("proj")
    repo.write("settings.py", f'KEYPLANE_KEY = "{key}"\n')
    repo.git("add", "settings.py")
    blocked = _commit(repo, "add settings")
    assert blocked.returncode != 0
    assert "keyplane-key" in blocked.stdout + blocked.stderr
    assert key not in blocked.stdout + blocked.stderr
    assert repo.git("rev-list", "--count", "HEAD") == "1"

    # `git commit -a` and `git commit <path>` commit from a temporary index (GIT_INDEX_FILE).
    repo.git("reset", "-q")
    repo.write("README.md", f"hello\nkey: {key}\n")
    for args in (["-a"], ["--", "README.md"]):
        done = subprocess.run(
            ["git", "-C", str(repo.path), "commit", "-m", "x", *args], capture_output=True, check=False
        )
        assert done.returncode != 0, args
    repo.write("README.md", "hello\n")

    repo.write("settings.py", 'KEYPLANE_KEY = os.environ["KEYPLANE_KEY"]\n')
    repo.git("add", "settings.py")
    passed = _commit(repo, "add settings")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert repo.git("rev-list", "--count", "HEAD") == "2"


def test_hook_carries_baseline_and_excludes(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    repo.commit("start")
    result = cli("--install-hook", "--exclude", "fixtures/**", "--min-confidence", "high", str(repo.path))
    assert result.exit_code == 0
    text = (repo.path / ".git" / "hooks" / "pre-commit").read_text()
    assert "--staged --exclude 'fixtures/**' --min-confidence high" in text
    repo.write("fixtures/k.txt", keys.generate("proj"))
    repo.write("weak.py", f'PASSWORD = "{rnd(24)}7"\n')  # low confidence only
    repo.git("add", "-A")
    assert _commit(repo, "fixture").returncode == 0


def test_install_refuses_a_foreign_hook_unless_forced(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    hook = repo.path / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\nexec make lint\n")
    refused = cli("--install-hook", str(repo.path))
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert hook.read_text() == "#!/bin/sh\nexec make lint\n"
    assert cli("--install-hook", "--force", str(repo.path)).exit_code == 0
    assert HOOK_MARKER in hook.read_text()
    assert cli("--install-hook", str(repo.path)).exit_code == 0  # ours: rewritten freely


def test_install_honours_core_hooks_path_and_refuses_non_repositories(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    repo.git("config", "core.hooksPath", ".githooks")
    assert cli("--install-hook", str(repo.path)).exit_code == 0
    assert HOOK_MARKER in (repo.path / ".githooks" / "pre-commit").read_text()
    plain = tmp_path / "plain"
    plain.mkdir()
    result = cli("--install-hook", str(plain))
    assert result.exit_code == 2 and "not a git repository" in result.stderr


def _hooks() -> dict[str, dict[str, str]]:
    """The hook definitions (a flat list of mappings; PyYAML is no dependency)."""
    hooks: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in HOOKS_YAML.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw.startswith("- "):
            current = {}
            raw = "  " + raw[2:]
        key, _, value = raw.strip().partition(":")
        current[key] = value.strip().strip('"')
        if key == "id":
            hooks[value.strip()] = current
    return hooks


def _run_entry(entry: str, cwd: Path, files: list[str]) -> int:
    argv = entry.split()
    assert argv[:2] == ["keyplane", "scan"]  # the CLI the lead registers scan in
    cmd = [sys.executable, "-m", "keyplane.scan", *argv[2:], *files]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, check=False).returncode


def test_pre_commit_hook_definitions_run_the_scanner(tmp_path: Path) -> None:
    hooks = _hooks()
    assert set(hooks) == {"keyplane-scan", "keyplane-scan-files"}
    staged, files = hooks["keyplane-scan"], hooks["keyplane-scan-files"]
    assert staged["language"] == files["language"] == "python"
    assert staged["pass_filenames"] == "false" and "--staged" in staged["entry"]
    assert "pass_filenames" not in files and "--staged" not in files["entry"]

    repo = Repo(tmp_path / "r")
    repo.commit("start", **{"a.txt": "a\n"})
    assert _run_entry(staged["entry"], repo.path, []) == 0
    repo.write("b.txt", keys.generate("svc") + "\n")
    repo.git("add", "b.txt")
    assert _run_entry(staged["entry"], repo.path, []) == 1
    assert _run_entry(files["entry"], repo.path, ["a.txt"]) == 0
    assert _run_entry(files["entry"], repo.path, ["a.txt", "b.txt"]) == 1
