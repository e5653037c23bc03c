"""Writes journal records to SQL: one transaction per batch, idempotent by request id.

Insert the per-request rows with ON CONFLICT (id) DO NOTHING RETURNING id, then add only the rows really
inserted to the minute/hour/day rollups (upserts that add). A batch applied twice (a crash between the
commit and the "applied" offset file, or two processes replaying the same orphan) therefore changes
nothing the second time. keyplane.usage.applier decides when and from where records are applied.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import orjson
from sqlalchemy import Connection, Engine, Insert, TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.usage import rollups
from keyplane.usage.journal import Record
from keyplane.usage.models import DIMS, ROLLUPS, SUMS, UsageRequest

_ROLLUP_CHUNK = 1000
# Per-request rows to one statement: a batch (usage_apply_batch, 2,000 by default) is inserted in a few statements
# of one transaction, so that its rows and their JSON text (~0.6 KB a record, twice) are never all in memory at
# once: the serving process's RSS would rise and fall by megabytes with each batch (docs/benchmarks.md).
_REQUEST_CHUNK = 250

ApplyStep = Callable[[Connection, list[Record]], None]
# Steps other features run in the same transaction over the records really inserted (billing: the spend
# ledger), per store engine: what usage_requests holds is then exactly what they counted. Keep this.
# They are plain (blocking) functions of a SQLAlchemy Connection, as this module's own SQL is: the applier's
# thread runs them on a blocking SQLite connection of its own (:func:`apply_blocking`), and every async
# caller through ``AsyncConnection.run_sync`` (:func:`apply_records`): one implementation for both.
APPLY_STEPS: weakref.WeakKeyDictionary[AsyncEngine, list[ApplyStep]] = weakref.WeakKeyDictionary()

# Every statement below is built once and has one fixed text whatever the batch size: a multi-row
# ``INSERT ... VALUES`` per batch (what this module used to build) is a new statement for every batch
# size, each compiled, prepared and cached by the driver (asyncpg's and sqlite3's statement caches),
# which grew the process by about 270 bytes per request without levelling off (issue 15, finding 6)
# and cost ~300 us of event-loop CPU per request. bench/soak_applier.py guards both.
#
# Rows travel as arrays, never one statement execution per row: on PostgreSQL each column is bound as
# one array (unnest), on SQLite the rows as one JSON array (json_each). One execution per statement
# matters on SQLite beyond speed: sqlite3 releases the GIL around every step, an executemany steps once
# per row, and in the applier's thread each step's return waits for the GIL behind the CPU-bound serving
# thread (up to the 5 ms switch interval). Per row, that kept the journal seconds behind under load
# (issue 13); per statement it is a handful of waits per batch.
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
# SQLite: the ids already stored, one statement for any batch size (the ids travel as one JSON array).
# Writers hold the database's write lock for the whole transaction (BEGIN IMMEDIATE), so what this
# reads stays true until the commit.
_SQLITE_EXISTING = text("SELECT id FROM usage_requests WHERE id IN (SELECT value FROM json_each(:ids))")
_SQLITE_REQUESTS = _sqlite_insert("usage_requests", _COLUMNS, "ON CONFLICT (id) DO NOTHING")
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


def _insert_requests(conn: Connection, records: list[Record]) -> set[str]:
    """Insert the per-request rows, :data:`_REQUEST_CHUNK` to a statement; returns the ids that were not stored yet."""
    inserted: set[str] = set()
    for i in range(0, len(records), _REQUEST_CHUNK):
        inserted |= _insert_chunk(conn, records[i : i + _REQUEST_CHUNK])
    return inserted


def _insert_chunk(conn: Connection, records: list[Record]) -> set[str]:
    rows = [rollups.request_values(r) for r in records]
    if conn.dialect.name == "postgresql":
        params = {c: [row[i] for row in rows] for i, c in enumerate(_COLUMNS)}
        return set(conn.execute(_PG_REQUESTS, params).scalars())
    ids = [row[0] for row in rows]
    existing = set(conn.execute(_SQLITE_EXISTING, {"ids": orjson.dumps(ids).decode()}).scalars())
    new_rows = [row for row in rows if row[0] not in existing] if existing else rows
    if new_rows:
        conn.execute(_SQLITE_REQUESTS, {"rows": orjson.dumps(new_rows).decode()})
    return {row[0] for row in new_rows}


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
