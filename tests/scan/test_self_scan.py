"""The scanner finds nothing in keyplane's own tree: no false positive on real code, and no real
credential committed (tests build theirs at run time). Other test suites' fixtures are theirs."""

from __future__ import annotations

from pathlib import Path

from keyplane.scan.runner import ScanOptions, run_scan

ROOT = Path(__file__).parents[2]


def test_keyplane_tree_is_clean() -> None:
    report = run_scan(ScanOptions(paths=[ROOT]))
    assert report.stats.files > 50  # the tree was really read
    stray = [
        f"{f.location} {f.rule.id} {f.redacted}"
        for f in report.findings
        if not f.path.startswith("tests/") or f.path.startswith("tests/scan/")
    ]
    assert stray == []
