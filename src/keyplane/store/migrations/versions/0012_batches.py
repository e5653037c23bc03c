"""batches: the estimated cost of batch input files, batch reservations and their metering

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_costs",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("object", sa.String(length=16), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=64), nullable=True),
        sa.Column("estimate_micros", sa.BigInteger(), nullable=True),
        sa.Column("why", sa.String(length=512), nullable=True),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("upstream", sa.String(length=128), nullable=True),
        sa.Column("input_file_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=True),
        sa.Column("settled_at", sa.BigInteger(), nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("batch_costs")
