"""api_keys.lineage_id: the first key of a rotation line, shared by its old and new values' budgets

Revision ID: 0021
Revises: 0020

A rotation made a new key id, and key-scope spend is counted per key id: the new value started the month at $0
spent, with no key spend limit nor rate limits of its own, and during a grace period the old and new values
could each spend the key's whole limit. The new key of a rotation now records the first key of its line, and
billing keeps the line's spend counter and rate-limit bucket under that id (billing/engine.py). Keys rotated
before this revision get it from their ``rotated_to`` chain, their predecessor's key limits where they have none,
and their spend ledger rows added to the first key's.
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.add_column(sa.Column("lineage_id", sa.String(64), nullable=True))
    conn = op.get_bind()
    rotated: dict[str, str] = dict(
        conn.execute(sa.text("SELECT id, rotated_to FROM api_keys WHERE rotated_to IS NOT NULL")).all()
    )
    previous = {new: old for old, new in rotated.items()}
    chains: dict[str, list[str]] = {}  # key id -> its line from the first key to it
    for new in previous:
        line, seen = [new], {new}
        while line[0] in previous and previous[line[0]] not in seen:  # back to the first key (a cycle: guarded)
            line.insert(0, previous[line[0]])
            seen.add(line[0])
        chains[new] = line
        conn.execute(sa.text("UPDATE api_keys SET lineage_id = :root WHERE id = :id"), {"root": line[0], "id": new})
    # What a rotation now does (control.rotate_key), done for the rotations made before it: each new key keeps its
    # predecessor's spend limit and rate limits where it has none of its own (oldest rotation first, so a key
    # rotated twice inherits through the middle one) ...
    for new, line in sorted(chains.items(), key=lambda kv: len(kv[1])):
        old = line[-2]
        for table, extra_key in (("spend_limits", ()), ("rate_limits", ("model",))):
            cols = [c["name"] for c in sa.inspect(conn).get_columns(table)]
            keys = ("scope", "scope_id", *extra_key)
            rows = (
                conn.execute(
                    sa.text(f"SELECT {', '.join(cols)} FROM {table} WHERE scope = 'api_key' AND scope_id = :old"),  # noqa: S608
                    {"old": old},
                )
                .mappings()
                .all()
            )
            for row in rows:
                where = " AND ".join(f"{k} = :{k}" for k in keys)
                have = {**{k: row[k] for k in keys}, "scope_id": new}
                if conn.execute(sa.text(f"SELECT 1 FROM {table} WHERE {where}"), have).first() is None:  # noqa: S608
                    values = {**row, "scope_id": new}
                    conn.execute(
                        sa.text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"),  # noqa: S608
                        values,
                    )
    # ... and the line's spend is counted under its first key: each later key's spend ledger rows are added to the
    # first key's for the same period (a restart seeds the counters from these; a fleet's Redis counters keep their
    # old split until they are rebuilt: docs/admin-api.md "Rotate").
    for new, line in chains.items():
        root = line[0]
        spent = conn.execute(
            sa.text(
                "SELECT period, micros, requests, updated_at FROM spend_ledger WHERE scope = 'api_key' AND scope_id = :id"
            ),
            {"id": new},
        ).all()
        for period, micros, requests, updated_at in spent:
            key = {"period": period, "root": root}
            found = conn.execute(
                sa.text(
                    "SELECT micros FROM spend_ledger WHERE period = :period AND scope = 'api_key' AND scope_id = :root"
                ),
                key,
            ).first()
            if found is None:
                conn.execute(
                    sa.text(
                        "INSERT INTO spend_ledger (period, scope, scope_id, micros, requests, updated_at) "
                        "VALUES (:period, 'api_key', :root, :micros, :requests, :updated_at)"
                    ),
                    {**key, "micros": micros, "requests": requests, "updated_at": updated_at},
                )
            else:
                conn.execute(
                    sa.text(
                        "UPDATE spend_ledger SET micros = micros + :micros, requests = requests + :requests "
                        "WHERE period = :period AND scope = 'api_key' AND scope_id = :root"
                    ),
                    {**key, "micros": micros, "requests": requests},
                )
            conn.execute(
                sa.text("DELETE FROM spend_ledger WHERE period = :period AND scope = 'api_key' AND scope_id = :id"),
                {"period": period, "id": new},
            )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("lineage_id")
