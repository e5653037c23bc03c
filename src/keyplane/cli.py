"""The `keyplane` command. Local commands work on the store directly (no server needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from keyplane import control, footprint
from keyplane.config import DEFAULT_CONFIG, ConfigError, Settings, load_settings
from keyplane.errors import APIError

T = TypeVar("T")

app = typer.Typer(
    name="keyplane",
    help="keyplane: a self-hosted gateway and control plane for LLM API keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
projects_app = typer.Typer(help="Create, list and archive projects.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Create, list, revoke, rotate, suspend keys and change their permissions.", no_args_is_help=True
)
users_app = typer.Typer(help="Add, list, change and remove users.", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")

# Rich markup is for keyplane's own styling only: any text that carries user or config content (names,
# emails, paths, messages, `[[alerts.sinks]]`...) goes through escape() or Text, or is printed with
# markup=False, so that its brackets are shown instead of being taken for style tags.
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="keyplane.toml to use (default: $KEYPLANE_HOME/keyplane.toml).", envvar="KEYPLANE_CONFIG"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _State:
    config: Path | None = None


state = _State()


@app.callback()
def _root(config: ConfigOpt = None) -> None:
    state.config = config


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def settings(create_secret: bool = False, **overrides: Any) -> Settings:
    try:
        return load_settings(state.config, create_secret=create_secret, overrides=overrides)
    except ConfigError as e:
        raise fail(str(e), 2) from None


def run_store(s: Settings, fn: Callable[[Any], Awaitable[T]], *, write: bool = False, need_org: bool = True) -> T:
    """Run ``fn(session)`` against the store (migrated first), turning errors into messages."""
    from keyplane.store import db

    sqlite_file = s.database_url.split(":///", 1)[1].split("?", 1)[0] if s.is_sqlite else ":memory:"
    if need_org and sqlite_file not in ("", ":memory:") and not Path(sqlite_file).exists():  # never create one
        raise fail(f"no keyplane store here yet ({sqlite_file}): run `keyplane init` (or set KEYPLANE_HOME).")

    async def go() -> T:
        from keyplane import bus

        engine = db.make_engine(s.database_url)
        # A fleet's running instances hear of the change on the bus at once (one node: they poll).
        fleet = bus.bus_kind(s.redis_url, s.database_url) != "in-process"
        publisher = bus.Publisher(bus.make_bus(s.redis_url, s.redis_prefix, s.database_url)) if fleet else None
        try:
            await db.migrate(engine)
            maker = bus.publishing_sessionmaker(engine, publisher) if publisher else db.sessionmaker(engine)
            async with maker() as session, session.begin() if write else contextlib.nullcontext():
                if need_org and await control.get_org(session) is None:
                    raise fail(f"keyplane is not initialized in {s.home.resolve()}; run `keyplane init` first.")
                return await fn(session)
        finally:
            if publisher is not None:
                await publisher.drain()
                await publisher.bus.close()
            await engine.dispose()

    try:
        return asyncio.run(go())
    except APIError as e:
        raise fail(e.message) from None
    except OSError as e:
        raise fail(f"cannot open the store: {e}") from None
    except Exception as e:  # a store that cannot be reached, e.g. PostgreSQL down
        if isinstance(e, typer.Exit):
            raise
        name = type(e).__name__
        if "sqlalchemy" in type(e).__module__ or "asyncpg" in type(e).__module__:
            raise fail(f"store error ({name}): {str(e).splitlines()[0][:300]}") from None
        raise


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def ts(t: int | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M") if t else "-"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=escape(title), title_justify="left")
    for c in columns:
        t.add_column(escape(c))
    for r in rows:  # cells are names, messages, errors: Text, never markup
        t.add_row(*[Text(str(x)) if x is not None else Text("-") for x in r])
    from keyplane.cli_table import fit

    env = os.environ.get("COLUMNS", "")
    if env.isdigit():
        out.width = int(env)  # COLUMNS as it is now: rich reads it once, when the console is made
    fit(t, out.width)  # ids never truncate (cli_table.py)
    out.print(t)


# --- init / serve ------------------------------------------------------------------------------


@app.command()
def init(
    org_name: Annotated[str, typer.Option(help="Name of the organization.")] = "My organization",
    owner_email: Annotated[str, typer.Option(help="Email of the owner user.")] = "owner@example.com",
    json: JsonOpt = False,
) -> None:
    """Create the store, the organization, its owner, "Default project", a service-account key and an
    admin key, and print both key values once. Refuses to run twice."""
    s = settings(create_secret=True)
    s.home.mkdir(parents=True, exist_ok=True)
    cfg_path = state.config or s.home / "keyplane.toml"
    if not cfg_path.exists():
        cfg_path.write_text(DEFAULT_CONFIG)
        s = settings()

    async def go(session: Any) -> dict[str, Any]:
        try:
            return await control.init_org(session, s.secret_key, org_name, owner_email)
        except control.AlreadyInitialized:
            raise fail(
                f"keyplane is already initialized in {s.home.resolve()}. Its keys were shown once at init and "
                "cannot be shown again; create new ones with `keyplane keys create` if they are lost."
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
    out.print(
        f"\nConfig: {cfg_path}. Next: `keyplane serve`, then point an OpenAI SDK at "
        f"http://{s.host}:{s.port}/v1 with the API key and model demo-echo.",
        markup=False,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (setting host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (setting port).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each with its own snapshot).")] = 1,
) -> None:
    """Run keyplane: the /v1 proxy, the admin API and health endpoints. Migrations apply on start."""
    if workers == 1:  # this process serves: its malloc settings and tokenizer come first (keyplane.footprint)
        footprint.prepare()
    import uvicorn

    s = settings(create_secret=True, host=host, port=port)
    if state.config:
        os.environ["KEYPLANE_CONFIG"] = str(state.config)
    if host:
        os.environ["KEYPLANE_HOST"] = host
    if port:
        os.environ["KEYPLANE_PORT"] = str(port)
    _ensure_org_or_warn(s)
    if workers > 1 and not s.redis_url:
        err.print(
            f"[yellow]warning:[/] {workers} workers without KEYPLANE_REDIS_URL: each worker keeps its own rate "
            "limits and budget reservations, so together they allow up to "
            f"{workers}x the limits. Set KEYPLANE_REDIS_URL to share them."
        )
    from keyplane.logs import setup_logging

    setup_logging(s.log_format, s.log_level)
    err.print(f"keyplane serving on http://{s.host}:{s.port} (store: {_store_name(s)})", markup=False)
    uvicorn.run(
        "keyplane.cli:app_from_env",
        factory=True,
        host=s.host,
        port=s.port,
        workers=workers,
        loop="auto",
        http="auto",
        log_level=s.log_level,
        access_log=False,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=10,
        # The client address is the socket's: forwarded-for headers are believed only from
        # keyplane's own `trusted_proxies` (IP allowlists, docs/access-control.md), not uvicorn's default.
        proxy_headers=False,
    )


def app_from_env() -> Any:
    """ASGI factory used by `keyplane serve` (and any ASGI server): settings from the environment."""
    footprint.prepare()  # a worker process of its own (--workers N, `uvicorn --factory`); else done already
    from keyplane.app import create_app

    return create_app(load_settings(os.environ.get("KEYPLANE_CONFIG") or None, create_secret=True))


def _store_name(s: Settings) -> str:
    if s.is_sqlite:
        return "SQLite " + s.database_url.split(":///", 1)[1]
    return "PostgreSQL"


def _ensure_org_or_warn(s: Settings) -> None:
    async def has_org(session: Any) -> bool:
        return await control.get_org(session) is not None

    if not run_store(s, has_org, need_org=False):
        err.print("[yellow]warning:[/] no organization yet: every key will be refused. Run `keyplane init`.")


# --- projects ----------------------------------------------------------------------------------


@projects_app.command("create")
def projects_create(name: Annotated[str, typer.Argument(help="Project name.")], json: JsonOpt = False) -> None:
    """Create a project."""
    from keyplane.admin import shapes

    p = run_store(settings(), lambda s: control.create_project(s, control.CLI_ACTOR, name), write=True)
    if json:
        print_json(shapes.project(p))
    else:
        out.print(f"created project {p.id} ({p.name})", markup=False)


@projects_app.command("list")
def projects_list(
    all: Annotated[bool, typer.Option("--all", help="Include archived projects.")] = False,
    json: JsonOpt = False,
) -> None:
    """List projects."""
    from sqlalchemy import select

    from keyplane.admin import shapes
    from keyplane.store.models import Project

    async def go(s: Any) -> list[Any]:
        stmt = select(Project).order_by(Project.seq)
        if not all:
            stmt = stmt.where(Project.status == "active")
        return list((await s.execute(stmt)).scalars())

    rows = run_store(settings(), go)
    if json:
        print_json([shapes.project(p) for p in rows])
        return
    table("Projects", ["id", "name", "status", "created"], [(p.id, p.name, p.status, ts(p.created_at)) for p in rows])


@projects_app.command("archive")
def projects_archive(
    project: Annotated[str, typer.Argument(help="Project id or unique name.")], json: JsonOpt = False
) -> None:
    """Archive a project: its keys stop working; it stays for reporting."""
    from keyplane.admin import shapes

    async def go(s: Any) -> Any:
        p = await control.find_project(s, project)
        return await control.archive_project(s, control.CLI_ACTOR, p.id)

    p = run_store(settings(), go, write=True)
    if json:
        print_json(shapes.project(p))
    else:
        out.print(f"archived project {p.id} ({p.name})", markup=False)


from keyplane.cli_keys import register as _register_keys  # noqa: E402
from keyplane.cli_users import register as _register_users  # noqa: E402

_register_keys(keys_app)
_register_users(users_app, app)
__import__("keyplane.web.cli", fromlist=["register"]).register(users_app)  # set-password, reset-2fa


def _register_optional() -> None:
    """Commands owned by other modules register themselves when present."""
    for mod in (
        "keyplane.doctor",
        "keyplane.scan.cli",
        "keyplane.billing.cli",
        "keyplane.usage.cli",
        "keyplane.guard.cli",
        "keyplane.providers.cli",
        "keyplane.members.cli",
        "keyplane.access.cli",
    ):
        try:
            module = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name is None or not (mod == e.name or mod.startswith(e.name + ".")):
                raise  # a real import error inside the module, not a feature that is absent
            continue
        module.register(app)


_register_optional()


def main() -> None:
    app()
