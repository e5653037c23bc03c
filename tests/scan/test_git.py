"""Real git repositories: history across branches, the index, the work tree; exactly the planted keys."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyplane import keys
from keyplane.scan.findings import ScanError
from keyplane.scan.runner import ScanOptions, run_scan
from tests.scan.helpers import SAMPLES, Repo, generic_value, near_miss_keyplane, openai_project, rnd


@dataclass
class Planted:
    repo: Repo
    expected_history: set[tuple[str, str, str, int, str]]  # path, rule, secret, line, commit
    expected_tree: set[tuple[str, str, str, int]]


def _found(report) -> set:
    return {(f.path, f.rule.id, f.secret, f.line, f.commit) for f in report.findings}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    mp = pytest.MonkeyPatch()
    from tests.scan.helpers import git_env

    for k, v in git_env().items():
        mp.setenv(k, v)
    repo = Repo(tmp_path_factory.mktemp("history") / "repo")
    k1, k2, o1 = keys.generate("proj"), keys.generate("svc"), openai_project()
    aws, generic = SAMPLES["aws-access-key-id"](), generic_value()
    look_alikes = "\n".join(
        [str(uuid.uuid4()), near_miss_keyplane(), "sk-proj-" + rnd(156), rnd(64, "0123456789abcdef")]
    )

    env_file = f"# service\r\nOPENAI_API_KEY={o1}\r\nKEYPLANE_KEY={k1}\r\nDEBUG=1\r\n"
    c1 = repo.commit("config", **{"config__.env": env_file, "README.md": look_alikes + "\n"})
    # The keyplane key is deleted in a later commit; the OpenAI key stays (same secret, new blob).
    c2 = repo.commit("drop key", **{"config__.env": f"# service\r\nOPENAI_API_KEY={o1}\r\nDEBUG=1\r\n"})

    repo.git("checkout", "-q", "-b", "feature", c1)
    binary = os.urandom(2048).replace(b"sk-", b"xx-") + b"\0" + k2.encode() + b"\0" + os.urandom(2048)
    binary = binary.replace(b"\n", b" ") + b"\n"
    cf1 = repo.commit("assets", **{"assets__logo.bin": binary})
    minified = "!function(){" + "var a=1;" * 30000 + f'window.cfg={{aws:"{aws}"}};' + "a++;" * 30000 + "}();"
    cf2 = repo.commit("bundle", **{"dist__app.min.js": minified})

    repo.git("checkout", "-q", "-b", "experiment", c2)
    ce1 = repo.commit("try", **{"src__app.py": f'import os\n\nAPI_KEY = "{generic}"\n'})
    repo.commit("undo", **{"src__app.py": 'import os\n\nAPI_KEY = os.environ["API_KEY"]\n'})
    repo.git("tag", "v0-experiment")

    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "feature", "-m", "merge feature")
    mp.undo()
    line_in_js = 1
    return Planted(
        repo,
        expected_history={
            ("config/.env", "openai-project-key", o1, 2, c1),
            ("config/.env", "keyplane-key", k1, 3, c1),
            ("assets/logo.bin", "keyplane-key", k2, 1, cf1),
            ("dist/app.min.js", "aws-access-key-id", aws, line_in_js, cf2),
            ("src/app.py", "generic-secret-assignment", generic, 3, ce1),
        },
        expected_tree={
            ("config/.env", "openai-project-key", o1, 2),
            ("assets/logo.bin", "keyplane-key", k2, 1),
            ("dist/app.min.js", "aws-access-key-id", aws, 1),
        },
    )


@pytest.mark.parametrize("engine", ["python", "auto"])
def test_history_finds_exactly_the_planted_keys(planted: Planted, engine: str) -> None:
    report = run_scan(ScanOptions(mode="history", paths=[planted.repo.path], engine=engine))  # type: ignore[arg-type]
    assert _found(report) == planted.expected_history
    binary = [f for f in report.findings if f.path == "assets/logo.bin"]
    assert binary[0].binary


def test_history_reads_each_blob_once_and_reports_progress(planted: Planted) -> None:
    calls: list[tuple[int, int]] = []
    report = run_scan(
        ScanOptions(mode="history", paths=[planted.repo.path]), progress=lambda d, t: calls.append((d, t))
    )
    blobs = set(planted.repo.git("rev-list", "--all", "--objects").split("\n"))
    n_blobs = sum(1 for line in blobs if " " in line and planted.repo.git("cat-file", "-t", line.split()[0]) == "blob")
    assert report.stats.files == n_blobs
    assert calls[0] == (0, n_blobs) and calls[-1] == (n_blobs, n_blobs)


def test_history_excludes(planted: Planted) -> None:
    report = run_scan(ScanOptions(mode="history", paths=[planted.repo.path], excludes=["dist/**", "*.bin"]))
    assert {f.path for f in report.findings} == {"config/.env", "src/app.py"}


def test_work_tree_finds_exactly_what_is_checked_out(planted: Planted) -> None:
    report = run_scan(ScanOptions(mode="worktree", paths=[planted.repo.path]))
    assert {(f.path, f.rule.id, f.secret, f.line) for f in report.findings} == planted.expected_tree
    assert all(f.commit is None for f in report.findings)


def test_work_tree_of_a_subdirectory_reports_paths_from_the_top(planted: Planted) -> None:
    report = run_scan(ScanOptions(mode="worktree", paths=[planted.repo.path / "config"]))
    assert {f.path for f in report.findings} == {"config/.env"}


def test_git_ignored_files_need_all_files(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    key = keys.generate("proj")
    repo.commit("ignore", **{".gitignore": ".env\n"})
    repo.write(".env", f"KEY={key}\n")
    assert run_scan(ScanOptions(paths=[repo.path])).findings == []
    assert [f.path for f in run_scan(ScanOptions(paths=[repo.path], all_files=True)).findings] == [".env"]


def test_staged_scans_only_added_lines(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    old, new, unstaged = keys.generate("proj"), keys.generate("proj"), keys.generate("proj")
    repo.commit("old key", **{"app.py": f"A = '{old}'\nB = 1\n"})
    assert run_scan(ScanOptions(mode="staged", paths=[repo.path])).findings == []
    repo.write("app.py", f"A = '{old}'\nB = 2\nC = '{new}'\n")
    binary = b"\0\1\2" + keys.generate("svc").encode() + b"\0"
    repo.write("blob.bin", binary)
    repo.git("add", "app.py", "blob.bin")
    repo.write("later.py", f"D = '{unstaged}'\n")  # not staged: not part of the commit
    report = run_scan(ScanOptions(mode="staged", paths=[repo.path]))
    assert {(f.path, f.line, f.secret) for f in report.findings} == {
        ("app.py", 3, new),
        ("blob.bin", 1, binary[3:-1].decode()),
    }


def test_staged_on_an_unborn_branch_and_deletions(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    key = keys.generate("admin")
    repo.write("first.txt", f"{key}\r\n")
    repo.git("add", "first.txt")
    assert [f.secret for f in run_scan(ScanOptions(mode="staged", paths=[repo.path])).findings] == [key]
    repo.git("commit", "-q", "-m", "first")
    repo.git("rm", "-q", "first.txt")
    assert run_scan(ScanOptions(mode="staged", paths=[repo.path])).findings == []


def test_staged_uses_the_index_not_the_work_tree(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "r")
    key = keys.generate("proj")
    repo.write("a.py", f"K = '{key}'\n")
    repo.git("add", "a.py")
    repo.write("a.py", "K = None\n")  # fixed in the work tree, but the index still has the key
    assert [f.secret for f in run_scan(ScanOptions(mode="staged", paths=[repo.path])).findings] == [key]


def test_not_a_repository(tmp_path: Path) -> None:
    for mode in ("staged", "history"):
        with pytest.raises(ScanError, match="not a git repository"):
            run_scan(ScanOptions(mode=mode, paths=[tmp_path]))  # type: ignore[arg-type]
    with pytest.raises(ScanError, match="no such file"):
        run_scan(ScanOptions(paths=[tmp_path / "missing"]))


def test_plain_directory_outside_git(tmp_path: Path) -> None:
    key = keys.generate("proj")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text(f"{key}\n")
    (tmp_path / ".git").mkdir()  # a stray .git folder is never scanned
    (tmp_path / ".git" / "config").write_text(f"{keys.generate('proj')}\n")
    report = run_scan(ScanOptions(paths=[tmp_path]))
    assert [(f.path, f.secret) for f in report.findings] == [("sub/x.txt", key)]


def test_large_files_are_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text(keys.generate("proj") + "x" * 2_000_000)
    report = run_scan(ScanOptions(paths=[tmp_path], max_file_size=1_000_000))
    assert report.findings == []
    assert report.stats.skipped == [("big.txt", "larger than 1000000 bytes")]


def test_unreadable_file_is_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text(keys.generate("proj"))
    (tmp_path / "other.txt").write_text(keys.generate("proj"))
    real_open = open

    def refusing_open(file, *args, **kwargs):  # chmod 0 does not stop root: refuse like EACCES
        if str(file).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    report = run_scan(ScanOptions(paths=[tmp_path]))
    assert report.stats.skipped == [("secret.txt", "cannot read: Permission denied")]
    assert [f.path for f in report.findings] == ["other.txt"]


def test_fifo_and_symlink_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "k.txt").write_text(keys.generate("proj"))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link.txt").symlink_to(outside / "k.txt")
    os.mkfifo(tree / "pipe")
    assert run_scan(ScanOptions(paths=[tree])).findings == []
