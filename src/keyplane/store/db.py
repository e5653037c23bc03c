"""Engine, sessions and migrations for SQLite (default) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
READ_ONLY_OPTION = "keyplane_read_only"


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool for reads: on SQLite its transactions begin deferred (no write lock)."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def private_sqlite_files(path: Path) -> None:
    """The store holds key digests, users' password hashes and the audit log: it is created 0600,
    like secret.key, before SQLite opens it (SQLite gives its -wal and -shm files the mode of the
    database file). Files an older version left readable by others are narrowed to 0600 too.

    An existing database file is never opened here: closing any descriptor of a file drops every POSIX
    lock the process holds on it (fcntl semantics), SQLite's included, so a second engine made while
    the store is open (the usage applier's) would let another process (a CLI command) decide it is the
    last connection and delete the live WAL under the server: "disk I/O error", then a malformed store.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.stat().st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            continue


def make_engine(url: str, timeout: float | None = None, **kw: Any) -> AsyncEngine:
    """An engine for the store. ``timeout`` (the database_timeout_seconds setting) bounds every wait on
    it: connecting, each statement and the wait for a pooled connection (PostgreSQL), the busy wait for
    the write lock (SQLite). None: the drivers' own (no statement timeout; 30 s of SQLite busy wait),
    for migrations and the CLI, whose statements may rightly take long."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            private_sqlite_files(Path(path.split("?", 1)[0]))
        busy = 30.0 if timeout is None else timeout
        if timeout is not None:
            kw.setdefault("pool_timeout", timeout)
        engine = create_async_engine(url, connect_args={"timeout": busy}, **kw)
        _sqlite_connections(engine.sync_engine, busy)
        return engine
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 10)
    kw.setdefault("pool_pre_ping", True)
    if timeout is not None:
        # asyncpg: ``timeout`` bounds connecting, ``command_timeout`` every statement (the pre-ping included),
        # so a store that stops answering (a hung server, a black-holed network) fails fast instead of
        # holding every caller for the whole outage.
        kw.setdefault("pool_timeout", timeout)
        kw["connect_args"] = {"timeout": timeout, "command_timeout": timeout, **kw.get("connect_args", {})}
    return create_async_engine(url, **kw)


def _sqlite_connections(engine: Engine, busy: float) -> None:
    """How keyplane opens every SQLite connection, async or blocking."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        cur.close()

    # Writers take the lock up front (BEGIN IMMEDIATE) so that two processes never deadlock on a
    # read lock upgrade; readers (``reader(engine)``) begin deferred and never hold the write lock,
    # so a reader cancelled mid-query cannot leave writers waiting. pysqlite's own transaction
    # handling is turned off for that.
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_blocking_engine(url: str, timeout: float) -> Engine:
    """A blocking (pysqlite) engine on the SQLite store file of ``url``, connected as :func:`make_engine`'s are:
    for the usage applier's own thread, which may block on it (keyplane.usage.apply_sql.apply_blocking)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ValueError("a blocking engine is made for a SQLite store file only")
    engine = create_engine(
        parsed.set(drivername="sqlite"),
        connect_args={"timeout": timeout, "check_same_thread": False},
        pool_timeout=timeout,
    )
    _sqlite_connections(engine, timeout)
    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn: Any) -> None:
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def head_revision() -> str:
    """The newest migration, read from the files (alembic itself is only imported when one is pending)."""
    revs: dict[str, str | None] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        src = path.read_text("utf-8")
        rev = re.search(r"^revision = ['\"]([^'\"]+)['\"]", src, re.M)
        down = re.search(r"^down_revision = (?:['\"]([^'\"]+)['\"]|None)", src, re.M)
        if rev:
            revs[rev.group(1)] = down.group(1) if down else None
    heads = set(revs) - {d for d in revs.values() if d}
    if len(heads) != 1:
        raise RuntimeError(f"the migrations must have exactly one head, found {sorted(heads)}")
    return heads.pop()


async def _current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with reader(engine).connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception:  # no table yet: a new store
        return None


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration (idempotent). A store already at the head costs one query; alembic
    (about 10 MB of modules) is imported only when there is something to apply."""
    if await _current_revision(engine) == head_revision():
        return
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))
