"""What a working-tree scan reads: the files under the given paths, minus the excluded ones.

Inside a git work tree the files are those git would commit (tracked, plus untracked files that
.gitignore does not ignore), as detect-secrets does; ``all_files`` adds the ignored ones too
(``.venv``, ``.env``...). Outside git, every file. ``.git`` directories and symbolic links are
never followed: a link may point anywhere, its target is scanned where it lives.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from keyplane.scan import git
from keyplane.scan.findings import ScanError


@dataclass(frozen=True, slots=True)
class Place:
    path: str  # relative to the scan root, with ``/``
    commit: str | None = None
    order: int = 0  # history: position of the commit, parents first


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes to scan and where they come from (a history blob may be at several paths)."""

    places: tuple[Place, ...]
    data: bytes
    only_lines: frozenset[int] | None = None  # staged scans: the added lines

    @classmethod
    def at(cls, path: str, data: bytes, only_lines: frozenset[int] | None = None) -> Blob:
        return cls((Place(path),), data, only_lines)


@dataclass(slots=True)
class Stats:
    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] | None = None

    def skip(self, path: str, reason: str) -> None:
        if self.skipped is None:
            self.skipped = []
        self.skipped.append((path, reason))


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


class PathFilter:
    """``--exclude`` globs, gitignore-like.

    A glob without ``/`` matches any path component (``*.min.js``, ``node_modules``); one with
    ``/`` matches the path from the root, or any directory leading to it (``docs/**``, ``vendor/``).
    ``*`` and ``?`` stay within a component, ``**`` crosses them.
    """

    def __init__(self, globs: list[str]) -> None:
        self.globs = globs
        stripped = [g.strip("/") for g in globs]
        self._component = [_glob_regex(g) for g in stripped if "/" not in g]
        self._anchored = [_glob_regex(g) for g in stripped if "/" in g]

    def excluded(self, path: str) -> bool:
        if not self.globs:
            return False
        parts = path.split("/")
        if any(rx.fullmatch(part) for rx in self._component for part in parts):
            return True
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(rx.fullmatch(prefix) for rx in self._anchored for prefix in prefixes)


def relative(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


def _walk(directory: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def candidate_files(target: Path, all_files: bool) -> Iterator[str]:
    if not target.is_dir():
        yield str(target)
        return
    if not all_files and git.work_tree_root(target) is not None:
        for name in git.ls_files(target):
            yield os.path.join(target, name)
    else:
        yield from _walk(str(target))


def read_tree(
    targets: list[Path], root: Path, path_filter: PathFilter, max_size: int, stats: Stats, all_files: bool
) -> Iterator[Blob]:
    for target in targets:
        if not os.path.lexists(target):
            raise ScanError(f"{target}: no such file or directory")
        for path in candidate_files(target, all_files):
            rel = relative(path, str(root))
            if path_filter.excluded(rel):
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # listed by git but deleted in the work tree
                continue
            except OSError as exc:
                stats.skip(rel, f"cannot stat: {exc.strerror}")
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # links, directories (submodules), sockets, FIFOs (reading would block)
            if info.st_size > max_size:
                stats.skip(rel, f"larger than {max_size} bytes")
                continue
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                stats.skip(rel, f"cannot read: {exc.strerror}")
                continue
            stats.files += 1
            stats.bytes += len(data)
            yield Blob.at(rel, data)
