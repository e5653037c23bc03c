"""Writes journal records to SQL: one transaction per batch, idempotent by request id.

Insert the per-request rows with ON CONFLICT (id) DO NOTHING RETURNING id, then add only the rows really
inserted to the minute/hour/day rollups (upserts that add). A batch applied twice (a crash between the
commit and the "applied" offset file, or two processes replaying the same orphan) therefore changes
nothing the second time. keyplane.usage.applier decides when and from where records are applied.
"""

from __future__ import annotations

import functools
import sqlite3
import weakref
from collections.abc import Callable, Sequence

import orjson
from sqlalchemy import Connection, Engine, Insert, TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.usage import rollups
from keyplane.usage.journal import Record
from keyplane.usage.models import DIMS, ROLLUPS, SUMS, UsageRequest

_ROLLUP_CHUNK = 1000

ApplyStep = Callable[[Connection, list[Record]], None]
# Steps other features run in the same transaction over the records really inserted (billing: the spend
# ledger), per store engine: what usage_requests holds is then exactly what they counted. Keep this.
# They are plain (blocking) functions of a SQLAlchemy Connection, as this module's own SQL is: the applier's
# thread runs them on a blocking SQLite connection of its own (:func:`apply_blocking`), and every async
# caller through ``AsyncConnection.run_sync`` (:func:`apply_records`): one implementation for both.
APPLY_STEPS: weakref.WeakKeyDictionary[AsyncEngine, list[ApplyStep]] = weakref.WeakKeyDictionary()

# Every statement below has one fixed text whatever the batch size (or one of a few): a multi-row
# ``INSERT ... VALUES`` sized to each batch (what this module used to build) is a new statement for every
# batch size, each compiled, prepared and cached by the driver (asyncpg's and sqlite3's statement caches),
# which grew the process by about 270 bytes per request without levelling off (issue 15, finding 6)
# and cost ~300 us of event-loop CPU per request. bench/soak_applier.py guards both.
#
# Rows travel in a handful of executions per batch, never one statement execution per row: on PostgreSQL
# each column is bound as one array (unnest); on SQLite the per-request rows are bound as the parameters of
# a multi-row VALUES statement in a few fixed sizes (_SQLITE_CHUNKS), the rollups (a few rows per batch) as
# one JSON array (json_each). One execution per many rows matters on SQLite beyond speed: sqlite3 releases
# the GIL around every step, an executemany steps once per row, and in the applier's thread each step's
# return waits for the GIL behind the CPU-bound serving thread (up to the 5 ms switch interval). Per row,
# that kept the journal seconds behind under load (issue 13); per statement it is a handful of waits per
# batch. Bound parameters rather than JSON for the per-request rows: SQLite's json_extract of each of a
# row's 28 columns cost ~26 us of the applier's CPU per request against ~11 for bound values (measured
# on the benchmark machine), CPU that the serving thread, on the other core, loses throughput to.
_COLUMNS: tuple[str, ...] = rollups.REQUEST_COLUMNS
_PG_ARRAY = {"BIGINT": "bigint[]", "INTEGER": "integer[]", "FLOAT": "float8[]", "BOOLEAN": "boolean[]"}


def _pg_insert_requests() -> TextClause:
    """PostgreSQL: one statement for any batch size, each column bound as one array (a single round
    trip), which tells which rows were new (RETURNING) so replays add nothing to the rollups."""
    types = {c.name: _PG_ARRAY.get(str(c.type).split("(")[0], "text[]") for c in UsageRequest.__table__.columns}
    cols = ", ".join(_COLUMNS)
    arrays = ", ".join(f"CAST(:{c} AS {types[c]})" for c in _COLUMNS)
    return text(
        f"INSERT INTO usage_requests ({cols}) SELECT * FROM unnest({arrays}) "  # noqa: S608 - fixed names
        "ON CONFLICT (id) DO NOTHING RETURNING id"
    )


def _sqlite_insert(table: str, columns: Sequence[str], conflict: str) -> TextClause:
    """SQLite: ``INSERT ... SELECT`` over the rows given as one JSON array of arrays (``:rows``), in
    ``columns`` order. JSON true/false arrive as 1/0, null as NULL."""
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return text(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {picks} "  # noqa: S608 - fixed names
        f"FROM json_each(:rows) WHERE true {conflict}"
    )


_PG_REQUESTS = _pg_insert_requests()
# SQLite: the per-request rows in chunks of these sizes (largest first: a batch of 1,000 is 11 statements),
# each size's statement text built once; sizes past the database's bound-parameter limit are skipped.
_SQLITE_CHUNKS = (128, 32, 8, 1)
# The last row stored before a batch: rows inserted after it are the batch's own (``seq`` is the rowid, and
# a writer holds the database's write lock for its whole transaction, BEGIN IMMEDIATE).
_SQLITE_LAST_SEQ = "SELECT max(seq) FROM usage_requests"
_SQLITE_SINCE = "SELECT id FROM usage_requests WHERE seq > ?"
_ROLLUP_COLUMNS: tuple[str, ...] = ("bucket", *DIMS, *SUMS)
_SQLITE_ROLLUPS: dict[int, TextClause] = {
    g: _sqlite_insert(
        t.__tablename__,
        _ROLLUP_COLUMNS,
        f"ON CONFLICT (bucket, {', '.join(DIMS)}) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMS),
    )
    for g, t in ROLLUPS
}
_statements: dict[str, dict[int, Insert]] = {}


def _pg_upserts() -> dict[int, Insert]:
    """{rollup granularity: upsert that adds} for PostgreSQL, built once, run as executemany."""
    got = _statements.get("postgresql")
    if got is None:
        from sqlalchemy.dialects import postgresql

        got = {}
        for granularity, table in ROLLUPS:
            ins = postgresql.insert(table)
            got[granularity] = ins.on_conflict_do_update(
                index_elements=["bucket", *DIMS], set_={s: getattr(table, s) + getattr(ins.excluded, s) for s in SUMS}
            )
        _statements["postgresql"] = got
    return got


@functools.cache
def _sqlite_requests(rows: int) -> str:
    """SQLite: the insert of ``rows`` per-request rows as positional parameters (one of _SQLITE_CHUNKS)."""
    one = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return (
        f"INSERT INTO usage_requests ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608 - fixed names
        + ", ".join([one] * rows)
        + " ON CONFLICT (id) DO NOTHING"
    )


def _sqlite_chunks(conn: Connection) -> tuple[int, ...]:
    """The chunk sizes this database takes (its limit on bound parameters: 32,766 by default since SQLite 3.32,
    999 before)."""
    raw = conn.connection.dbapi_connection
    if isinstance(raw, sqlite3.Connection):
        limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    else:  # aiosqlite's (its connection lives in its own thread): the library's default
        limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return tuple(n for n in _SQLITE_CHUNKS if n * len(_COLUMNS) <= limit) or (1,)


def _insert_requests(conn: Connection, records: list[Record]) -> set[str]:
    """Insert the per-request rows; returns the ids that were not stored yet."""
    rows = [rollups.request_values(r) for r in records]
    if conn.dialect.name == "postgresql":
        params = {c: [row[i] for row in rows] for i, c in enumerate(_COLUMNS)}
        return set(conn.execute(_PG_REQUESTS, params).scalars())
    last = conn.exec_driver_sql(_SQLITE_LAST_SEQ).scalar()
    inserted = i = 0
    for size in _sqlite_chunks(conn):
        while len(rows) - i >= size:
            flat = tuple([v for row in rows[i : i + size] for v in row])
            inserted += conn.exec_driver_sql(_sqlite_requests(size), flat).rowcount
            i += size
    if inserted == len(rows):
        return {row[0] for row in rows}
    # Some were stored already (a batch applied again: a replay): the new ones are those inserted just now.
    return set(conn.exec_driver_sql(_SQLITE_SINCE, (last or 0,)).scalars())


def _upsert_rollups(conn: Connection, records: list[Record]) -> None:
    """Add the records to the minute, hour and day rollups (one statement per table on SQLite)."""
    by_granularity = rollups.rollups_of(records)
    sqlite = conn.dialect.name != "postgresql"
    for granularity, _table in ROLLUPS:
        agg = by_granularity[granularity]
        for i in range(0, len(agg), _ROLLUP_CHUNK):
            chunk = agg[i : i + _ROLLUP_CHUNK]
            if sqlite:
                values = [[row[c] for c in _ROLLUP_COLUMNS] for row in chunk]
                conn.execute(_SQLITE_ROLLUPS[granularity], {"rows": orjson.dumps(values).decode()})
            else:
                conn.execute(_pg_upserts()[granularity], chunk)


def apply_in(conn: Connection, records: Sequence[Record], steps: Sequence[ApplyStep]) -> int:
    """The body of the apply transaction, in ``conn`` (already begun): returns how many records were new."""
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.id, r)
    if not unique:
        return 0
    inserted = _insert_requests(conn, list(unique.values()))
    new = [r for r in unique.values() if r.id in inserted]
    if new:
        _upsert_rollups(conn, new)
        for step in steps:  # billing: the spend ledger (billing/ledger.py)
            step(conn, new)
    return len(new)


def apply_blocking(engine: Engine, records: Sequence[Record], steps_of: AsyncEngine) -> int:
    """:func:`apply_records` on a blocking engine (the applier thread's own SQLite connection: no driver thread
    to hop to and back for every statement, as aiosqlite's, each hop a wait for the GIL behind the serving
    thread). ``steps_of``: the store's main engine, whose APPLY_STEPS run."""
    if not records:
        return 0
    with engine.begin() as conn:
        return apply_in(conn, records, APPLY_STEPS.get(steps_of, ()))


async def apply_records(engine: AsyncEngine, records: Sequence[Record], steps_of: AsyncEngine | None = None) -> int:
    """Write records to SQL in one transaction; returns how many were new. ``steps_of``: the engine whose
    APPLY_STEPS run (the store's main engine when ``engine`` is the applier thread's own)."""
    if not records:
        return 0
    steps = tuple(APPLY_STEPS.get(steps_of or engine, ()))
    async with engine.begin() as conn:
        return await conn.run_sync(apply_in, records, steps)
