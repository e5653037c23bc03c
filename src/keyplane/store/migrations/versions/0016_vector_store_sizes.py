"""vector store sizes: usage_bytes as the upstream reported it, for the Usage API's vector_stores bucket

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_vector_stores",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("vector_store_id", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("observed_at", sa.BigInteger(), nullable=False),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("gone", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("usage_vector_stores", schema=None) as batch_op:
        batch_op.create_index("ix_usage_vector_stores_project", ["project_id", "observed_at"], unique=False)
        batch_op.create_index("ix_usage_vector_stores_store", ["vector_store_id", "observed_at"], unique=False)


def downgrade() -> None:
    op.drop_table("usage_vector_stores")
