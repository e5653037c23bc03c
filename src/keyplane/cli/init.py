"""`keyplane init` and `keyplane serve`."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from keyplane import control
from keyplane.cli.common import JsonOpt, err, fail, out, print_json, run_store, settings, state
from keyplane.config import DEFAULT_CONFIG, Settings
from keyplane.serving import ServeOptions


def init(
    org_name: Annotated[str, typer.Option(help="Name of the organization.")] = "My organization",
    owner_email: Annotated[str, typer.Option(help="Email of the owner user.")] = "owner@example.com",
    host: Annotated[
        str | None, typer.Option(help="Address `keyplane serve` will bind, for the URL printed (setting host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port `keyplane serve` will listen on, for the URL printed (setting port).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Create the store, the organization, its owner, "Default project", a service-account key and an
    admin key, and print both key values once. Refuses to run twice.

    The URL it prints is the one `keyplane serve` uses by default (settings host and port, e.g.
    KEYPLANE_PORT); give --host/--port when serve will be given other ones."""
    s = settings(create_secret=True, host=host, port=port)
    s.home.mkdir(parents=True, exist_ok=True)
    cfg_path = state.config or s.home / "keyplane.toml"
    if not cfg_path.exists():
        cfg_path.write_text(DEFAULT_CONFIG)
        s = settings(host=host, port=port)

    async def go(session: Any) -> dict[str, Any]:
        try:
            return await control.init_org(session, s.secret_key, org_name, owner_email)
        except control.AlreadyInitialized:
            raise fail(
                f"keyplane is already initialized in {s.home.resolve()}. Its keys were shown once at init and "
                "cannot be shown again; if they are lost, create new ones: `keyplane keys create` (an API key) and "
                "`keyplane keys create-admin` (an admin key)."
            ) from None

    res = run_store(s, go, write=True, need_org=False)
    if json:
        print_json(res)
        return
    out.print(f"[bold green]keyplane initialized[/] in {escape(str(s.home.resolve()))}")
    out.print(
        f"organization  {res['organization_id']}\nowner         {res['owner_user_id']} ({owner_email})", markup=False
    )
    out.print(f"project       {res['project_id']} (Default project)", markup=False)
    out.print("\n[bold]These keys are shown once. Store them now.[/]")
    out.print(
        f"API key (service account, Default project):\n  {res['api_key']}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    out.print(f"Admin key (admin API):\n  {res['admin_key']}", highlight=False, soft_wrap=True, markup=False)
    serve_args = "".join(f" --{n} {v}" for n, v in (("host", host), ("port", port)) if v is not None)
    out.print(
        f"\nConfig: {cfg_path}. Next: `keyplane serve{serve_args}` (scripts/run starts it for you), then point an "
        "OpenAI SDK at "
        f"http://{s.host}:{s.port}/v1 with the API key and model demo-echo.",
        markup=False,
    )


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (setting host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (setting port).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each with its own snapshot).")] = 1,
    unshared_limits: Annotated[
        bool,
        typer.Option(
            "--unshared-limits",
            help="With --workers N and no KEYPLANE_REDIS_URL: start anyway, each worker enforcing the limits on "
            "its own (together up to N times every rate limit, spend limit and credit).",
        ),
    ] = False,
) -> None:
    """Run keyplane: the /v1 proxy, the admin API, the dashboard, /metrics and health endpoints. Migrations apply on
    start.

    A port already in use (or an address that cannot be bound) is refused before anything starts: exit
    status 2, one line naming the port; pick another with --port (or KEYPLANE_PORT)."""
    s = settings(create_secret=True, host=host, port=port)
    _ensure_org_or_warn(s)
    if workers > 1 and not s.redis_url:
        why = (
            f"{workers} workers without KEYPLANE_REDIS_URL: each worker keeps its own rate limits and budget "
            f"reservations, so together they allow up to {workers}x the limits"
        )
        if not unshared_limits:
            err.print(
                f"[red]error:[/] {why}. Set KEYPLANE_REDIS_URL to share them, run one worker, or pass "
                "--unshared-limits to accept that."
            )
            raise typer.Exit(2)
        err.print(f"[yellow]warning:[/] {why} (--unshared-limits).")
    if (problem := _cannot_listen(s.host, s.port)) is not None:
        err.print(f"error: {problem}", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    err.print(f"keyplane serving on http://{s.host}:{s.port} (store: {_store_name(s)})", markup=False)
    # The serving process is keyplane.serving, given its settings on its command line: this process
    # becomes it (same pid), leaving typer, click and rich behind (keyplane/serving.py).
    opts = ServeOptions(config=str(state.config) if state.config else None, host=s.host, port=s.port, workers=workers)
    argv = opts.argv()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606 (no shell: this interpreter, arguments as a list)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (bound as the server will bind it, then let go), or None. A check
    before the start, so that a port in use is one line and exit status 2, not uvicorn's bare
    "[Errno 98] address already in use"; a name that does not resolve is left for the server to report."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
    except (OSError, UnicodeError):
        return None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closed port's TIME_WAIT is free
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use (another keyplane, or another server): stop it, or "
                    f"pick another port with `keyplane serve --port PORT` (or set KEYPLANE_PORT)."
                )
            return (
                f"cannot listen on {host}:{port}: {e.strerror or e}. Pick another address or port with "
                "`keyplane serve --host HOST --port PORT`."
            )
    return None


def _store_name(s: Settings) -> str:
    if s.is_sqlite:
        return "SQLite " + s.database_url.split(":///", 1)[1]
    return "PostgreSQL"


def _ensure_org_or_warn(s: Settings) -> None:
    async def has_org(session: Any) -> bool:
        return await control.get_org(session) is not None

    if not run_store(s, has_org, need_org=False):
        err.print("[yellow]warning:[/] no organization yet: every key will be refused. Run `keyplane init`.")
