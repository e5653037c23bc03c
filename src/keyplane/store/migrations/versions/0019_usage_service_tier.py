"""service tier of a usage: the tier the answer says served a request, a rollup key (the Usage API's service_tier)

Revision ID: 0019
Revises: 0018

``usage_requests`` gains a column; the minute, hour and day rollups gain it as the last column of their primary
key, so requests served at different tiers are summed apart (issue 17). Rows already there were not told
their tier: they read ``default``.

PostgreSQL: ``ADD COLUMN ... NOT NULL DEFAULT 'default'`` changes no row (a constant default is kept in the
catalog), then the primary key is dropped and built again over the new columns (the index is rebuilt). SQLite
cannot alter a primary key: each rollup table is copied into a new one (batch mode), ``usage_requests`` only
gets the column (no copy).
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_ROLLUPS = ("usage_minute", "usage_hour", "usage_day")
_KEY = ("bucket", "project_id", "api_key_id", "user_id", "model", "kind")
_SUMS = (
    "requests",
    "model_requests",
    "errors",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_micros",
    "cost_input_micros",
    "units",
    "input_audio_tokens",
    "output_audio_tokens",
    "latency_ms_sum",
)


def _tier(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "service_tier", sa.String(length=32), nullable=False, server_default="default", primary_key=primary_key
    )


def _pk_name(table: str) -> str | None:
    return sa.inspect(op.get_bind()).get_pk_constraint(table).get("name")


def _set_key(table: str, columns: tuple[str, ...], *, add_tier: bool) -> None:
    """The rollup's primary key over ``columns``, the tier column added first (or dropped after)."""
    name = f"{table}_pkey"  # PostgreSQL's own name for it: a store made from the models has the same
    if op.get_bind().dialect.name == "postgresql":
        if add_tier:
            op.add_column(table, _tier())
        op.drop_constraint(_pk_name(table) or name, table, type_="primary")
        if not add_tier:
            op.drop_column(table, "service_tier")
        op.create_primary_key(name, table, list(columns))
        return
    # SQLite: the table is copied into a new one (its columns' primary_key flags must agree with the new key).
    with op.batch_alter_table(table, recreate="always") as b:
        if add_tier:
            b.add_column(_tier(primary_key=True))
        else:
            b.drop_column("service_tier")
        b.create_primary_key(name, list(columns))


def upgrade() -> None:
    with op.batch_alter_table("usage_requests") as b:
        b.add_column(_tier())  # SQLite: a plain ADD COLUMN, the table is not copied
    for table in _ROLLUPS:
        _set_key(table, (*_KEY, "service_tier"), add_tier=True)


def downgrade() -> None:
    key, sums = ", ".join(_KEY), ", ".join(f"SUM({s}) AS {s}" for s in _SUMS)
    for table in _ROLLUPS:
        # The rows of one key at different tiers become one row again: summed aside, then put back.
        op.execute(f"CREATE TABLE {table}_untiered AS SELECT {key}, {sums} FROM {table} GROUP BY {key}")  # noqa: S608
        op.execute(f"DELETE FROM {table}")  # noqa: S608
        _set_key(table, _KEY, add_tier=False)
        cols = ", ".join((*_KEY, *_SUMS))
        op.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_untiered")  # noqa: S608
        op.execute(f"DROP TABLE {table}_untiered")
    with op.batch_alter_table("usage_requests") as b:
        b.drop_column("service_tier")
