"""What every `keyplane` command shares: the consoles, the global --config, settings, the store, output.

Commands (here in keyplane.cli and in the features' ``cli`` modules) are plain functions that import
from this module; keyplane.cli.app registers them. This module imports no command module.
"""

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

from keyplane import control
from keyplane.config import ConfigError, Settings, load_settings
from keyplane.domain import DomainError, cli_message
from keyplane.errors import APIError

T = TypeVar("T")

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


def _print_version(value: bool) -> None:
    if value:
        from keyplane import __version__

        typer.echo(f"keyplane {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[
    bool, typer.Option("--version", help="Print keyplane's version and exit.", is_eager=True, callback=_print_version)
]


def root(config: ConfigOpt = None, version: VersionOpt = False) -> None:
    """The global options (the root callback): the keyplane.toml every command then reads (``--version`` prints
    the version and exits before any command)."""
    state.config = config


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )  # one line: scripts match it (scripts/run)
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
        from keyplane.bus import bus_kind, make_bus
        from keyplane.bus.publish import Publisher, publishing_sessionmaker

        engine = db.make_engine(s.database_url)
        # A fleet's running instances hear of the change on the bus at once (one node: they poll).
        fleet = bus_kind(s.redis_url, s.database_url) != "in-process"
        publisher = Publisher(make_bus(s.redis_url, s.redis_prefix, s.database_url)) if fleet else None
        try:
            await db.migrate(engine)
            maker = publishing_sessionmaker(engine, publisher) if publisher else db.sessionmaker(engine)
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
    except DomainError as e:  # the domain's refusals (keyplane.domain): the message, exit 1
        raise fail(cli_message(e)) from None
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
    from keyplane.cli.fit import fit

    env = os.environ.get("COLUMNS", "")
    if env.isdigit():
        out.width = int(env)  # COLUMNS as it is now: rich reads it once, when the console is made
    fit(t, out.width)  # ids never truncate (keyplane/cli/fit.py)
    out.print(t)
