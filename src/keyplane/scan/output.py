"""Reports: for people (rich, grouped by file), JSON, and SARIF 2.1.0 for code-scanning UIs.

No report ever holds a secret: findings show their redacted form and their fingerprint.
"""

from __future__ import annotations

import json
from itertools import groupby
from typing import Any, Final

from rich.console import Console
from rich.text import Text

from keyplane import __version__ as _version
from keyplane.scan.findings import Finding, printable
from keyplane.scan.rules import Rule
from keyplane.scan.runner import ScanReport
from keyplane.scan.verify import Verification

SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL: Final = {"high": "error", "medium": "warning", "low": "note"}
SECURITY_SEVERITY: Final = {"high": "9.0", "medium": "6.0", "low": "3.0"}
_STYLE: Final = {"high": "bold red", "medium": "yellow", "low": "cyan"}


def _verdict(finding: Finding, verification: Verification | None) -> str | None:
    if verification is None or not finding.rule.verifiable:
        return None
    status = verification.status_of(finding)
    if status is None:
        return "unknown to the gateway" if finding.secret_sha256 in verification.checked else None
    where = f"{status.id}" + (f" in {status.project_id}" if status.project_id else "")
    if status.revoked_now:
        return f"was live, revoked now ({where})"
    return f"{status.status} ({where})"


def _verdict_json(finding: Finding, verification: Verification | None) -> dict[str, Any] | None:
    if verification is None or not finding.rule.verifiable:
        return None
    status = verification.status_of(finding)
    if status is None:
        return {"status": "unknown"}
    return {
        "status": status.status,
        "key_id": status.id,
        "project_id": status.project_id,
        "kind": status.kind,
        "revoked_now": status.revoked_now,
    }


def render_human(report: ScanReport, console: Console, verification: Verification | None = None) -> None:
    findings = report.findings
    for path, group in groupby(findings, key=lambda f: f.path):
        console.print(Text(printable(path), style="bold underline"))
        for f in group:
            line = Text("  ")
            line.append(f"{f.line}:{f.column}".ljust(9), style="dim")
            line.append(f.rule.id, style=_STYLE[f.rule.confidence])
            line.append(f" ({f.rule.confidence})  ")
            line.append(f.redacted)
            if f.commit:
                line.append(f"  commit {f.commit[:12]}", style="magenta")
            if f.binary:
                line.append("  [binary file]", style="dim")
            verdict = _verdict(f, verification)
            if verdict:
                line.append(f"  -> {verdict}", style="bold")
            console.print(line)
    advice = sorted({f.rule.advice for f in findings})
    if advice:
        console.print()
        for text in advice:
            console.print(Text("advice: " + text))
    for path, reason in report.stats.skipped or []:
        console.print(Text(f"skipped {printable(path)}: {reason}", style="yellow"))
    if verification is not None:
        for error in verification.errors:
            console.print(Text(f"revoke failed: {printable(error)}", style="bold red"))
    console.print(Text(_summary(report), style="bold red" if findings else "bold green"))


def _summary(report: ScanReport) -> str:
    n, files = len(report.findings), len({f.path for f in report.findings})
    unit = ("blob" if report.mode == "history" else "file") + "s" * (report.stats.files != 1)
    scanned = f"{report.stats.files} {unit}, {report.stats.bytes / 1e6:.1f} MB in {report.seconds:.2f} s"
    head = f"{n} finding{'s' * (n != 1)} in {files} file{'s' * (files != 1)}" if n else "no secrets found"
    quiet = [
        f"{count} {what}"
        for count, what in (
            (report.allowed, "allowed inline"),
            (report.ignored, "ignored"),
            (report.baselined, "in the baseline"),
        )
        if count
    ]
    return f"{head} ({scanned}" + (f"; {', '.join(quiet)}" if quiet else "") + ")"


def to_json(report: ScanReport, verification: Verification | None = None) -> str:
    findings = []
    for f in report.findings:
        row: dict[str, Any] = {
            "rule_id": f.rule.id,
            "description": f.rule.description,
            "confidence": f.rule.confidence,
            "path": f.path,
            "line": f.line,
            "column": f.column,
            "commit": f.commit,
            "redacted": f.redacted,
            "fingerprint": f.fingerprint,
            "binary": f.binary,
            "advice": f.rule.advice,
        }
        verdict = _verdict_json(f, verification)
        if verdict is not None:
            row["verification"] = verdict
        findings.append(row)
    document = {
        "version": 1,
        "mode": report.mode,
        "engine": report.engine,
        "findings": findings,
        "summary": {
            "findings": len(report.findings),
            "allowed": report.allowed,
            "ignored": report.ignored,
            "baselined": report.baselined,
            "scanned": report.stats.files,
            "bytes": report.stats.bytes,
            "seconds": round(report.seconds, 3),
            "skipped": [{"path": p, "reason": r} for p, r in report.stats.skipped or []],
        },
        "errors": list(verification.errors) if verification else [],
    }
    return json.dumps(document, indent=2)


def _sarif_rule(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.description},
        "fullDescription": {"text": f"{rule.description}. Confidence: {rule.confidence}."},
        "help": {"text": rule.advice},
        "defaultConfiguration": {"level": SARIF_LEVEL[rule.confidence]},
        "properties": {
            "tags": ["security", "secret"],
            "precision": {"high": "very-high", "medium": "high", "low": "medium"}[rule.confidence],
            "security-severity": SECURITY_SEVERITY[rule.confidence],
        },
    }


def to_sarif(report: ScanReport, rules: tuple[Rule, ...], verification: Verification | None = None) -> str:
    index = {rule.id: i for i, rule in enumerate(rules)}
    results = []
    for f in report.findings:
        message = f"{f.rule.description}: {f.redacted}"
        if f.commit:
            message += f" (added in commit {f.commit})"
        verdict = _verdict(f, verification)
        if verdict:
            message += f"; gateway: {verdict}"
        result: dict[str, Any] = {
            "ruleId": f.rule.id,
            "ruleIndex": index[f.rule.id],
            "level": SARIF_LEVEL[f.rule.confidence],
            "message": {"text": message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.path, "uriBaseId": "%SRCROOT%"},
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
            "partialFingerprints": {"keyplaneFingerprint/v1": f.fingerprint},
        }
        if f.commit:
            result["properties"] = {"commit": f.commit}
        results.append(result)
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "keyplane-scan",
                        "version": _version,
                        "rules": [_sarif_rule(rule) for rule in rules],
                    }
                },
                "columnKind": "unicodeCodePoints",
                "originalUriBaseIds": {"%SRCROOT%": {"uri": report.root.as_uri() + "/"}},
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2)
