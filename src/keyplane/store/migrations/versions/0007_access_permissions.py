"""model and hosted-tool permissions, IP allowlists, key expiry notices

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_policies",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "scope", "target_id"),
    )
    op.create_table(
        "access_expiry_notices",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("days", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "days"),
    )


def downgrade() -> None:
    op.drop_table("access_expiry_notices")
    op.drop_table("access_policies")
