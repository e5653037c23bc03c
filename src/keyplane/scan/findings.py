"""A finding, its redacted form and fingerprint; the ignore file and the baseline.

A finding holds its secret only in memory (for --verify); ``repr()`` leaves it out and nothing
prints it: output shows the redacted form, files store the fingerprint.

Fingerprint: ``<path>:<rule id>:<first 16 hex of SHA-256(secret)>``. It names one secret in one
file, whatever its line or commit, so lines can move and history can be rewritten without the
ignore file or the baseline going stale. A bare ``<16 hex>`` entry in the ignore file matches
that secret in every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from keyplane import keys
from keyplane.scan.rules import Rule

IGNORE_FILE: Final = ".keyplane-scan-ignore"
BASELINE_VERSION: Final = 1
_HASH_LEN: Final = 16
_BARE_HASH: Final = re.compile(r"[0-9a-f]{%d}" % _HASH_LEN)
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ScanError(Exception):
    """A problem with the input (path, repository, baseline, gateway): reported, exit code 2."""


def redact(secret: str) -> str:
    """At most 8 leading and 4 trailing characters, fewer for short secrets (a quarter at most)."""
    if keys.KEY_PATTERN.fullmatch(secret):
        return keys.redact(secret)
    head, tail = min(8, len(secret) // 4), min(4, len(secret) // 8)
    shown = secret[:head] + "..." + (secret[-tail:] if tail else "")
    return _UNPRINTABLE.sub("?", shown)


def printable(text: str) -> str:
    """A path or message safe for a terminal: control characters (and undecodable bytes of file
    names) become ``?``."""
    return _UNPRINTABLE.sub("?", text).encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    path: str
    line: int
    column: int
    commit: str | None = None
    secret: str = field(default="", repr=False, compare=False)
    binary: bool = False

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret.encode("utf-8")).hexdigest()

    @property
    def fingerprint(self) -> str:
        return f"{self.path}:{self.rule.id}:{self.secret_sha256[:_HASH_LEN]}"

    @property
    def redacted(self) -> str:
        return redact(self.secret)

    @property
    def location(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}@{self.commit}" if self.commit else where


class Suppressions:
    """What the ignore file and the baseline take out of a report."""

    def __init__(self, ignored: Iterable[str] = (), baselined: Iterable[str] = ()) -> None:
        # Set membership of fingerprints (hashes of secrets, not secrets): no timing concern.
        self.ignored = frozenset(ignored)
        self.baselined = frozenset(baselined)

    def is_ignored(self, finding: Finding) -> bool:
        fp = finding.fingerprint
        return fp in self.ignored or fp.rsplit(":", 1)[1] in self.ignored

    def is_baselined(self, finding: Finding) -> bool:
        return finding.fingerprint in self.baselined


def load_ignore_file(path: Path) -> set[str]:
    """Fingerprints and bare hashes, one a line; ``#`` starts a comment. Missing file: empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(f"cannot read {path}: {exc}") from None
    entries = set()
    for number, raw in enumerate(text.splitlines(), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if not (_BARE_HASH.fullmatch(entry) or entry.count(":") >= 2):
            raise ScanError(f"{path}:{number}: not a fingerprint (<path>:<rule>:<hash>) nor a 16-hex secret hash")
        entries.add(entry)
    return entries


def load_baseline(path: Path) -> set[str]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScanError(f"baseline {path} does not exist (create it with --update-baseline)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScanError(f"cannot read baseline {path}: {exc}") from None
    if (
        not isinstance(document, dict)
        or document.get("version") != BASELINE_VERSION
        or not isinstance(document.get("findings"), list)
    ):
        raise ScanError(f"{path} is not a keyplane scan baseline (version {BASELINE_VERSION})")
    entries = document["findings"]
    fingerprints = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
            raise ScanError(f"{path}: every finding needs a fingerprint")
        fingerprints.add(entry["fingerprint"])
    return fingerprints


def baseline_document(findings: Iterable[Finding]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for f in findings:
        rows.setdefault(
            f.fingerprint,
            {"fingerprint": f.fingerprint, "rule_id": f.rule.id, "path": f.path, "line": f.line},
        )
    return {
        "version": BASELINE_VERSION,
        "generated_by": "keyplane scan --update-baseline",
        "findings": [rows[k] for k in sorted(rows)],
    }


def write_baseline(path: Path, findings: Iterable[Finding]) -> None:
    text = json.dumps(baseline_document(findings), indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ScanError(f"cannot write baseline {path}: {exc}") from None
