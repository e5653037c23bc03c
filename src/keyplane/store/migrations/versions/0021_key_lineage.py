"""api_keys.lineage_id: the first key of a rotation line, shared by its old and new values' budgets

Revision ID: 0021
Revises: 0020

A rotation made a new key id, and key-scope spend is counted per key id: the new value started the month at $0
spent, with no key spend limit nor rate limits of its own, and during a grace period the old and new values
could each spend the key's whole limit. The new key of a rotation now records the first key of its line, and
billing keeps the line's spend counter and rate-limit bucket under that id (billing/engine.py). Keys rotated
before this revision get it from their ``rotated_to`` chain.
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
    for new in previous:
        root, seen = new, {new}
        while root in previous and previous[root] not in seen:  # back to the first key (a cycle cannot be: guarded)
            root = previous[root]
            seen.add(root)
        conn.execute(sa.text("UPDATE api_keys SET lineage_id = :root WHERE id = :id"), {"root": root, "id": new})


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("lineage_id")
