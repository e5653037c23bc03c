"""Git plumbing for the scanner: the files git knows, what is staged, and every blob of history.

History is read as blobs, not patches: ``git log --all --raw`` names, for every commit of every
ref, the blobs it adds or changes; each distinct blob is then read once through one
``git cat-file --batch`` process and attributed to the earliest commit (parents first) that
introduced it at each path.

Git is run with the caller's environment, so a pre-commit hook sees the index git prepared for
the commit (``GIT_INDEX_FILE``), and with ``--no-ext-diff --no-textconv``: a repository's
configuration cannot make the scanner run its commands or see converted text.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from keyplane.scan.findings import ScanError

_NULL_SHA: Final = "0" * 40
_HUNK: Final = re.compile(rb"^@@+ (?:-\d+(?:,\d+)? )+\+(\d+)(?:,(\d+))? @@")
_INDEX: Final = re.compile(rb"^index [0-9a-f]+(?:,[0-9a-f]+)*\.\.([0-9a-f]+)")
_SUBMODULE_MODE: Final = "160000"


def run(repo: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise ScanError("git is not installed (needed for git repositories, --staged and --history)") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ScanError(f"git {args[0]} failed in {repo}: {message[-1] if message else done.returncode}")
    return done.stdout


def work_tree_root(path: Path) -> Path | None:
    """The top of the work tree holding ``path`` (a directory), or None outside git."""
    try:
        out = run(path, "rev-parse", "--show-toplevel")
    except ScanError:
        return None
    top = os.fsdecode(out.strip())
    return Path(top) if top else None


def require_repository(path: Path) -> None:
    if not path.is_dir():
        raise ScanError(f"{path}: not a directory")
    try:
        run(path, "rev-parse", "--git-dir")
    except ScanError:
        raise ScanError(f"{path} is not a git repository") from None


def ls_files(directory: Path) -> list[str]:
    """Tracked and untracked-not-ignored files under ``directory``, relative to it."""
    out = run(directory, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({os.fsdecode(p) for p in out.split(b"\0") if p})


@dataclass(frozen=True, slots=True)
class StagedFile:
    path: str
    sha: str
    added_lines: frozenset[int] | None  # None: every line (new or binary file)


def _added_lines(patch: bytes) -> list[tuple[str | None, frozenset[int] | None]]:
    """Per ``diff --git`` section, in order: (new blob sha, added line numbers or None)."""
    sections: list[tuple[str | None, frozenset[int] | None]] = []
    sha: str | None = None
    lines: set[int] = set()
    whole = False
    started = False

    def close() -> None:
        if started:
            sections.append((sha, None if whole else frozenset(lines)))

    for line in patch.split(b"\n"):
        if line.startswith((b"diff --git ", b"diff --cc ")):
            close()
            started, sha, lines, whole = True, None, set(), False
        elif line.startswith(b"index ") and (m := _INDEX.match(line)):
            sha = m.group(1).decode()
        elif line.startswith(b"new file mode") or line.startswith(b"Binary files ") or line == b"GIT binary patch":
            whole = True
        elif line.startswith(b"@@") and (m := _HUNK.match(line)):
            first, count = int(m.group(1)), int(m.group(2) or 1)
            lines.update(range(first, first + count))
    close()
    return sections


def staged_files(repo: Path) -> list[StagedFile]:
    """Files added or changed in the index, with the lines the commit would add."""
    common = ("--cached", "--no-renames", "--no-ext-diff", "--no-textconv", "--diff-filter=d")
    raw = run(repo, "diff", *common, "--raw", "-z", "--no-abbrev").split(b"\0")
    entries = []
    for meta, raw_path in zip(raw[0::2], raw[1::2], strict=False):
        fields = meta.decode().lstrip(":").split()
        if len(fields) < 5:
            continue
        entries.append((fields[1], fields[2], fields[3], os.fsdecode(raw_path)))
    patch = run(repo, "diff", *common, "-U0", "--no-color", "--full-index")
    sections = _added_lines(patch)
    aligned = len(sections) == len(entries)
    staged: list[StagedFile] = []
    for i, (mode, old_sha, sha, path) in enumerate(entries):
        if mode == _SUBMODULE_MODE or sha in (_NULL_SHA, old_sha):
            continue  # a submodule, or a mode change alone: no line added
        added: frozenset[int] | None = None
        if aligned and sections[i][0] == sha:
            added = sections[i][1]
        # Otherwise scan the whole file: more than the added lines, never less.
        staged.append(StagedFile(path, sha, added))
    return staged


@dataclass(frozen=True, slots=True)
class Introduction:
    path: str
    commit: str
    order: int  # position of the commit, parents before children


def history(repo: Path) -> dict[str, list[Introduction]]:
    """Every blob of every commit of every ref, with the first commit that brought it to each path."""
    out = run(
        repo,
        "log",
        "--all",
        "--topo-order",
        "--reverse",
        "--raw",
        "--no-renames",
        "--no-abbrev",
        "--diff-merges=first-parent",
        "--no-ext-diff",
        "--no-textconv",
        "-z",
        "--format=%x01%H",
    )
    blobs: dict[str, list[Introduction]] = {}
    seen: set[tuple[str, str]] = set()
    commit, order = "", 0
    tokens = iter(out.split(b"\0"))
    for token in tokens:
        token = token.lstrip(b"\n")
        if token.startswith(b"\x01"):
            commit, order = token[1:].decode(), order + 1
        elif token.startswith(b":"):
            path = os.fsdecode(next(tokens, b""))
            fields = token.decode().lstrip(":").split()
            if len(fields) < 5 or fields[1] == _SUBMODULE_MODE or fields[3] == _NULL_SHA:
                continue
            sha = fields[3]
            if (sha, path) not in seen:
                seen.add((sha, path))
                blobs.setdefault(sha, []).append(Introduction(path, commit, order))
    return blobs


def read_blobs(repo: Path, shas: list[str], max_size: int) -> Iterator[tuple[str, bytes | None]]:
    """(sha, content) for each sha present, in order; content is None when larger than ``max_size``."""
    try:
        proc = subprocess.Popen(
            ["git", "-C", str(repo), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ScanError("git is not installed") from None
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def feed() -> None:
        # A thread, so that git never blocks on a full stdout while we are still writing.
        try:
            for sha in shas:
                stdin.write(sha.encode() + b"\n")
            stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for sha in shas:
            header = stdout.readline().split()
            if len(header) == 2 and header[1] == b"missing":
                continue  # a partial or shallow clone: not there to scan
            if len(header) != 3:
                raise ScanError(f"git cat-file: unexpected output for {sha}")
            size = int(header[2])
            if size > max_size:
                remaining = size + 1
                while remaining:
                    chunk = stdout.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise ScanError("git cat-file: output ended early")
                    remaining -= len(chunk)
                yield sha, None
                continue
            data = stdout.read(size + 1)[:-1]  # the content, then a newline
            if len(data) != size:
                raise ScanError("git cat-file: output ended early")
            yield sha, data
    finally:
        stdout.close()
        proc.kill()
        proc.wait()
        writer.join(timeout=5)


def install_hook_path(repo: Path) -> Path:
    """Where git looks for the pre-commit hook (honours core.hooksPath)."""
    out = run(repo, "rev-parse", "--git-path", "hooks/pre-commit")
    path = Path(os.fsdecode(out.strip()))
    return path if path.is_absolute() else repo / path
