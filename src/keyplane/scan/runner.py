"""One scan, start to end: read the sources, match, drop what is allowed, ignored or baselined."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from keyplane.scan import git
from keyplane.scan.engine import EngineName, Scanner
from keyplane.scan.findings import (
    IGNORE_FILE,
    Finding,
    ScanError,
    Suppressions,
    load_baseline,
    load_ignore_file,
)
from keyplane.scan.rules import Confidence, select
from keyplane.scan.sources import Blob, PathFilter, Place, Stats, read_tree

Mode = Literal["worktree", "staged", "history", "stdin"]
Progress = Callable[[int, int], None]  # (blobs done, blobs in all)
DEFAULT_MAX_FILE_SIZE = 50 * 1024 * 1024
STDIN_PATH = "<stdin>"


@dataclass(slots=True)
class ScanOptions:
    mode: Mode = "worktree"
    paths: list[Path] = field(default_factory=lambda: [Path(".")])
    excludes: list[str] = field(default_factory=list)
    baseline: Path | None = None
    min_confidence: Confidence = "low"
    all_files: bool = False
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    engine: EngineName = "auto"


@dataclass(slots=True)
class ScanReport:
    mode: Mode
    root: Path
    engine: str
    findings: list[Finding]  # what to report
    unsuppressed: list[Finding]  # before the baseline: what --update-baseline writes
    allowed: int
    ignored: int
    baselined: int
    stats: Stats
    seconds: float


def scan_root(options: ScanOptions) -> Path:
    """Where reported paths start and where .keyplane-scan-ignore lives: the work tree's top."""
    if options.mode == "stdin":
        return git.work_tree_root(Path.cwd()) or Path.cwd()
    first = options.paths[0]
    if not first.exists():
        raise ScanError(f"{first}: no such file or directory")
    directory = first if first.is_dir() else first.parent
    if options.mode in ("staged", "history"):
        git.require_repository(directory)
    top = git.work_tree_root(directory)
    return top if top is not None else directory.resolve()  # outside git, or a bare repository


def _staged_blobs(options: ScanOptions, path_filter: PathFilter, stats: Stats) -> Iterator[Blob]:
    repo = options.paths[0]
    by_sha: dict[str, list[git.StagedFile]] = {}
    for f in git.staged_files(repo):
        if not path_filter.excluded(f.path):
            by_sha.setdefault(f.sha, []).append(f)
    for sha, data in git.read_blobs(repo, list(by_sha), options.max_file_size):
        for f in by_sha[sha]:
            if data is None:
                stats.skip(f.path, f"larger than {options.max_file_size} bytes")
                continue
            stats.files += 1
            stats.bytes += len(data)
            yield Blob.at(f.path, data, f.added_lines)


def _history_blobs(
    options: ScanOptions, path_filter: PathFilter, stats: Stats, progress: Progress | None
) -> Iterator[Blob]:
    repo = options.paths[0]
    wanted: dict[str, tuple[Place, ...]] = {}
    for sha, intros in git.history(repo).items():
        places = tuple(Place(i.path, i.commit, i.order) for i in intros if not path_filter.excluded(i.path))
        if places:
            wanted[sha] = places
    total = len(wanted)
    if progress:
        progress(0, total)
    for done, (sha, data) in enumerate(git.read_blobs(repo, list(wanted), options.max_file_size), 1):
        if progress:
            progress(done, total)
        places = wanted[sha]
        if data is None:
            first = places[0]
            stats.skip(f"{first.path}@{first.commit}", f"larger than {options.max_file_size} bytes")
            continue
        stats.files += 1
        stats.bytes += len(data)
        yield Blob(places, data)


def _blobs(options: ScanOptions, root: Path, stats: Stats, progress: Progress | None) -> Iterator[Blob]:
    path_filter = PathFilter(options.excludes)
    if options.mode == "stdin":
        data = sys.stdin.buffer.read()
        stats.files, stats.bytes = 1, len(data)
        yield Blob.at(STDIN_PATH, data)
    elif options.mode == "worktree":
        targets = [p.absolute() for p in options.paths]
        yield from read_tree(targets, root, path_filter, options.max_file_size, stats, options.all_files)
    elif options.mode == "staged":
        yield from _staged_blobs(options, path_filter, stats)
    else:
        yield from _history_blobs(options, path_filter, stats, progress)


def _match(scanner: Scanner, blobs: Iterable[Blob]) -> tuple[list[Finding], int]:
    """Findings, and how many matches ``keyplane:allow`` let through. History: one per secret
    per path, at the earliest commit that added it there; otherwise one per line."""
    first: dict[tuple[str, str, str, int], tuple[int, Finding]] = {}
    allowed = 0
    for blob in blobs:
        matches = scanner.scan(blob.data)
        if not matches:
            continue
        binary = b"\0" in blob.data[:8192]
        for m in matches:
            if blob.only_lines is not None and m.line not in blob.only_lines:
                continue
            if m.allowed:
                allowed += 1
                continue
            secret = m.secret.decode("ascii", "replace")
            for place in blob.places:
                finding = Finding(m.rule, place.path, m.line, m.column, place.commit, secret, binary)
                key = (place.path, m.rule.id, finding.secret_sha256, 0 if place.commit else m.line)
                if key not in first or place.order < first[key][0]:
                    first[key] = (place.order, finding)
    return [finding for _, finding in first.values()], allowed


def run_scan(options: ScanOptions, progress: Progress | None = None) -> ScanReport:
    started = time.perf_counter()
    root = scan_root(options)
    suppressions = Suppressions(
        load_ignore_file(root / IGNORE_FILE),
        load_baseline(options.baseline) if options.baseline is not None else (),
    )
    scanner = Scanner(select(options.min_confidence), options.engine)
    stats = Stats()
    findings, allowed = _match(scanner, _blobs(options, root, stats, progress))
    findings.sort(key=lambda f: (f.path, f.line, f.column, f.rule.id, f.commit or ""))
    kept = [f for f in findings if not suppressions.is_ignored(f)]
    reported = [f for f in kept if not suppressions.is_baselined(f)]
    return ScanReport(
        mode=options.mode,
        root=root,
        engine=scanner.engine,
        findings=reported,
        unsuppressed=kept,
        allowed=allowed,
        ignored=len(findings) - len(kept),
        baselined=len(kept) - len(reported),
        stats=stats,
        seconds=time.perf_counter() - started,
    )
