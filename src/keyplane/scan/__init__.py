"""Leak scanner: finds keyplane keys, OpenAI keys and other credentials in files and git history.

Flow: sources (files, the index, history blobs) -> engine (anchor prefilter + one alternation of
the rules) -> findings (redacted, fingerprinted) -> ignore file and baseline -> output (human,
JSON, SARIF) -> optionally verify/revoke keyplane keys against the gateway by SHA-256.
"""

from keyplane.scan.engine import Match, Scanner
from keyplane.scan.findings import Finding, ScanError, redact
from keyplane.scan.rules import RULES, Rule
from keyplane.scan.runner import ScanOptions, ScanReport, run_scan

__all__ = [
    "RULES",
    "Finding",
    "Match",
    "Rule",
    "ScanError",
    "ScanOptions",
    "ScanReport",
    "Scanner",
    "redact",
    "run_scan",
]
