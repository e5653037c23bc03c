"""batches, realtime sessions and the rest of the metered endpoints

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Images made, characters spoken, seconds of audio transcribed: the usage API's non-token buckets.
_TABLES = ("usage_requests", "usage_minute", "usage_hour", "usage_day")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("units", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as b:
            b.drop_column("units")
