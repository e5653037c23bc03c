"""`keyplane doctor` (registered by keyplane.cli.registry); the checks are keyplane.doctor's."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from keyplane.doctor import DEFAULT_BASE_URL, Report, diagnose


def _print(report: Report) -> None:
    from rich.console import Console
    from rich.markup import escape

    c = Console(highlight=False)
    c.print(
        f"keyplane doctor: {report.base_url}"
        + (f" with key {report.key} (from {report.key_source})" if report.key else ""),
        markup=False,
    )
    for ch in report.checks:
        c.print(
            f"{'[green]ok[/green]  ' if ch.ok else '[red]FAIL[/red]'} {escape(f'{ch.name}: {ch.detail}')}", markup=True
        )
        if ch.fix and not ch.ok:
            c.print(f"      fix: {ch.fix}", markup=False)
    if not report.ok:
        c.print("Some checks failed; see the fixes above.")
    elif "budget" in report.skipped:
        c.print(
            "All checks passed, except what was not checked: spend limits and prepaid credit (give an admin key: "
            "--admin-key, or set KEYPLANE_ADMIN_KEY)."
        )
    else:
        c.print("All checks passed.")


def doctor(
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", help="keyplane's /v1 URL (default: $OPENAI_BASE_URL, else http://127.0.0.1:8080/v1)."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="The key to check (default: $OPENAI_API_KEY, else $KEYPLANE_API_KEY)."),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            help="Also check the spend limits and prepaid credit with this admin key (read-only; "
            "default: $KEYPLANE_ADMIN_KEY, safer than a command line).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 10.0,
) -> None:
    """Check a key and the way to keyplane, and explain any 401/403/429 with its fix.

    Checks the key (format, live, project), that its permissions allow model requests, GET /v1/models and,
    with an admin key, the spend limits and credit that would refuse its calls (429 insufficient_quota).
    Sends no model request: nothing it does costs money.
    """
    source = "--key" if key else None
    if key is None:
        for var in ("OPENAI_API_KEY", "KEYPLANE_API_KEY"):
            if os.environ.get(var):
                key, source = os.environ[var], f"${var}"
                break
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    admin_key = admin_key or os.environ.get("KEYPLANE_ADMIN_KEY") or None
    report = diagnose(url, key, source, timeout, admin_key=admin_key)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        _print(report)
    raise typer.Exit(0 if report.ok else 1)
