"""``keyplane scan``: the command-line face of the scanner.

Exit codes: 0 clean, 1 something found (for hooks and CI), 2 usage error or a scan that could
not be done (bad path, not a repository, gateway unreachable...), 130 interrupted.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from keyplane import keys
from keyplane.scan.engine import hyperscan_available
from keyplane.scan.findings import ScanError, printable, write_baseline
from keyplane.scan.hook import install_hook
from keyplane.scan.output import render_human, to_json, to_sarif
from keyplane.scan.rules import select
from keyplane.scan.runner import DEFAULT_MAX_FILE_SIZE, Mode, ScanOptions, ScanReport, run_scan
from keyplane.scan.verify import Gateway, Verification, is_loopback, is_plain_http, verify

ADMIN_KEY_ENV = "KEYPLANE_ADMIN_KEY"
HELP = (
    "Find leaked API keys and credentials in files, staged changes or git history.\n\n"
    "Finds keyplane keys (checksum-validated), OpenAI keys and the provider and cloud credentials "
    "that sit beside them in .env files. Secrets are never printed in full.\n\n"
    "Exit code: 0 clean, 1 findings, 2 usage error or scan failure. See docs/scan.md."
)


class MinConfidence(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Engine(enum.StrEnum):
    auto = "auto"
    python = "python"
    hyperscan = "hyperscan"


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {printable(message)}", err=True)
    raise typer.Exit(2)


def _check_usage(ctx: typer.Context, paths: list[Path], mode: Mode, flags: dict[str, bool]) -> None:
    """Usage errors exit 2 with the usage line, as the parser's own errors do."""

    def conflict(a: str, b: str) -> None:
        if flags[a] and flags[b]:
            ctx.fail(f"--{a} and --{b} cannot be used together")

    conflict("staged", "history")
    conflict("json", "sarif")
    if any(str(p) == "-" for p in paths) and (len(paths) > 1 or mode != "stdin"):
        ctx.fail("`-` (stdin) must be the only path, without --staged or --history")
    if mode in ("staged", "history") and len(paths) > 1:
        ctx.fail(f"--{mode} takes one repository path")
    if flags["update-baseline"] and not flags["baseline"]:
        ctx.fail("--update-baseline needs --baseline FILE")
    if (flags["verify"] or flags["revoke"]) and not flags["gateway"]:
        ctx.fail("--verify and --revoke need --gateway URL")
    if flags["force"] and not flags["install-hook"]:
        ctx.fail("--force only applies to --install-hook")
    if flags["install-hook"]:
        for other in ("staged", "history", "json", "sarif", "update-baseline", "verify", "revoke"):
            conflict("install-hook", other)
        if len(paths) > 1 or mode == "stdin":
            ctx.fail("--install-hook takes one repository path")


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("scanning history"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blobs"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _run(options: ScanOptions) -> ScanReport:
    if options.mode != "history":
        return run_scan(options)
    err = Console(stderr=True)
    with _progress_bar(err) as bar:
        task = bar.add_task("history", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run_scan(options, progress)


def _gateway(ctx: typer.Context, url: str, admin_key: str | None) -> Gateway:
    if not admin_key:
        ctx.fail(f"--verify needs an admin key: --admin-key or {ADMIN_KEY_ENV}")
    kind = keys.parse(admin_key.strip())
    if kind is not None and kind != "admin":
        ctx.fail(f"the admin key is a keyplane {kind} key; an admin key (sk-kp-admin-...) is needed")
    gateway = Gateway(url, admin_key)
    if is_plain_http(url) and not is_loopback(url):
        typer.echo("warning: the admin key is sent over plain http; use https", err=True)
    return gateway


def scan(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="Files or directories to scan (default: the current directory); `-` reads stdin. "
            "With --staged, --history or --install-hook: the repository.",
            show_default=False,
        ),
    ] = None,
    staged: Annotated[
        bool, typer.Option("--staged", help="Scan the lines the next commit adds (the git index), for pre-commit.")
    ] = False,
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Scan every commit of every branch and tag of a git repository; each blob is read once "
            "and a secret is reported at the earliest commit that added it to a path.",
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Skip paths matching GLOB (repeatable). Without `/` it matches any path component "
            "(`*.min.js`, `node_modules`); with `/` the path from the root (`tests/fixtures/**`).",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            metavar="FILE",
            dir_okay=False,
            help="Report only findings not listed in this baseline file (for adopting the scanner in "
            "a repository with old findings).",
        ),
    ] = None,
    update_baseline: Annotated[
        bool,
        typer.Option("--update-baseline", help="Write every current finding to the --baseline file and exit 0."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sarif: Annotated[
        bool, typer.Option("--sarif", help="Print the report as SARIF 2.1.0 (GitHub code scanning and others).")
    ] = False,
    min_confidence: Annotated[
        MinConfidence,
        typer.Option("--min-confidence", help="Report only rules of this confidence or higher."),
    ] = MinConfidence.low,
    all_files: Annotated[
        bool,
        typer.Option(
            "--all-files",
            help="In a git work tree, also scan files .gitignore ignores (by default: the files git would commit).",
        ),
    ] = False,
    max_file_size: Annotated[
        int,
        typer.Option(
            "--max-file-size", metavar="MB", min=1, help="Skip (and report) files and blobs larger than this."
        ),
    ] = DEFAULT_MAX_FILE_SIZE // (1024 * 1024),
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="Anchor prefilter: hyperscan when its wheel is installed (auto), or pure Python. "
            "Findings are the same either way.",
        ),
    ] = Engine.auto,
    verify_keys: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Ask the keyplane gateway whether each found keyplane key is live. Only SHA-256(key) is sent.",
        ),
    ] = False,
    revoke: Annotated[
        bool,
        typer.Option(
            "--revoke", help="Revoke found keyplane keys that are live (active or suspended). Implies --verify."
        ),
    ] = False,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", metavar="URL", help="The keyplane gateway for --verify and --revoke."),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            metavar="KEY",
            envvar=ADMIN_KEY_ENV,
            show_envvar=True,
            show_default=False,
            help="A keyplane admin key for --verify and --revoke; prefer the environment variable "
            "(a command line is visible to other users).",
        ),
    ] = None,
    install_hook_flag: Annotated[
        bool,
        typer.Option(
            "--install-hook",
            help="Write a git pre-commit hook running `keyplane scan --staged` (with --baseline, --exclude "
            "and --min-confidence passed on) into the repository, instead of scanning.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --install-hook: replace a pre-commit hook keyplane did not write.")
    ] = False,
) -> None:
    paths = paths or [Path(".")]
    excludes = exclude or []
    mode: Mode = "staged" if staged else "history" if history else "stdin" if str(paths[0]) == "-" else "worktree"
    flags = {
        "staged": staged,
        "history": history,
        "json": json_output,
        "sarif": sarif,
        "update-baseline": update_baseline,
        "baseline": baseline is not None,
        "verify": verify_keys,
        "revoke": revoke,
        "gateway": gateway is not None,
        "force": force,
        "install-hook": install_hook_flag,
    }
    _check_usage(ctx, paths, mode, flags)
    if engine is Engine.hyperscan and not hyperscan_available():
        ctx.fail("--engine hyperscan: the hyperscan package is not installed")
    try:
        if install_hook_flag:
            extra = [a for g in excludes for a in ("--exclude", g)]
            if baseline is not None:
                extra += ["--baseline", str(baseline)]
            if min_confidence is not MinConfidence.low:
                extra += ["--min-confidence", min_confidence.value]
            hook = install_hook(paths[0], force, extra)
            typer.echo(f"installed the pre-commit hook at {printable(str(hook))}")
            return
        client = _gateway(ctx, gateway, admin_key) if gateway and (verify_keys or revoke) else None
        options = ScanOptions(
            mode=mode,
            paths=paths,
            excludes=excludes,
            baseline=None if update_baseline else baseline,
            min_confidence=min_confidence.value,
            all_files=all_files,
            max_file_size=max_file_size * 1024 * 1024,
            engine=engine.value,
        )
        report = _run(options)
        if update_baseline:
            assert baseline is not None
            write_baseline(baseline, report.unsuppressed)
            typer.echo(f"wrote {len(report.unsuppressed)} finding(s) to the baseline {printable(str(baseline))}")
            return
    except ScanError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    verification: Verification | None = None
    failure: str | None = None
    if client is not None:
        try:
            verification = verify(report.findings, client, revoke)
        except ScanError as exc:
            failure = str(exc)  # the report still prints: the findings stand without the gateway
        from keyplane.providers.leaks import verify_provider_keys  # sk-proj-/sk-svcacct- (docs/providers.md)

        try:
            provider_check = verify_provider_keys(report.findings, client, revoke)
        except ScanError as exc:
            failure = failure or str(exc)
    if json_output:
        typer.echo(to_json(report, verification))
    elif sarif:
        typer.echo(to_sarif(report, select(options.min_confidence), verification))
    else:
        render_human(report, Console(highlight=False, soft_wrap=True), verification)
    for line in provider_check.lines() if client is not None and failure is None else ():
        typer.echo(printable(line), err=True)
    if failure is not None:
        _fail(f"verification failed: {failure}")
    if (verification is not None and verification.errors) or (client is not None and provider_check.errors):
        raise typer.Exit(2)
    raise typer.Exit(1 if report.findings else 0)


def register(app: typer.Typer) -> None:
    """Adds the ``scan`` command to the keyplane CLI (or any typer app)."""
    app.command("scan", help=HELP, no_args_is_help=False)(scan)


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app(prog_name="keyplane scan")
