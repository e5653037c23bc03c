"""audio tokens of a usage: the audio parts of input_tokens and output_tokens (the Usage API's completions bucket)

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Audio models on chat completions and realtime sessions: input_audio_tokens / output_audio_tokens.
_TABLES = ("usage_requests", "usage_minute", "usage_hour", "usage_day")
_COLUMNS = ("input_audio_tokens", "output_audio_tokens")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as b:
            for column in _COLUMNS:
                b.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as b:
            for column in _COLUMNS:
                b.drop_column(column)
