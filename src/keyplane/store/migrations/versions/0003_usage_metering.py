"""usage metering: per-request records and per-minute/hour/day rollups (keyplane.usage.models)

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ROLLUPS = ("usage_minute", "usage_hour", "usage_day")


def upgrade() -> None:
    op.create_table(
        "usage_requests",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=True),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("api_key_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("upstream", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=256), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("cost_input_micros", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("disconnected", sa.Boolean(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=256), nullable=True),
        sa.Column("upstream_request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.create_index("ix_usage_requests_created", ["created_at"], unique=False)
        batch_op.create_index("ix_usage_requests_upstream_id", ["upstream_request_id"], unique=False)
        batch_op.create_index("ix_usage_requests_key", ["api_key_id", "created_at"], unique=False)
        batch_op.create_index("ix_usage_requests_project", ["project_id", "created_at"], unique=False)

    for name in _ROLLUPS:
        op.create_table(
            name,
            sa.Column("bucket", sa.BigInteger(), nullable=False),
            sa.Column("project_id", sa.String(length=64), nullable=False),
            sa.Column("api_key_id", sa.String(length=64), nullable=False),
            sa.Column("user_id", sa.String(length=64), nullable=False),
            sa.Column("model", sa.String(length=256), nullable=False),
            sa.Column("kind", sa.String(length=32), nullable=False),
            sa.Column("requests", sa.BigInteger(), nullable=False),
            sa.Column("model_requests", sa.BigInteger(), nullable=False),
            sa.Column("errors", sa.BigInteger(), nullable=False),
            sa.Column("input_tokens", sa.BigInteger(), nullable=False),
            sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
            sa.Column("output_tokens", sa.BigInteger(), nullable=False),
            sa.Column("cost_micros", sa.BigInteger(), nullable=False),
            sa.Column("cost_input_micros", sa.BigInteger(), nullable=False),
            sa.Column("latency_ms_sum", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("bucket", "project_id", "api_key_id", "user_id", "model", "kind"),
        )


def downgrade() -> None:
    for name in _ROLLUPS:
        op.drop_table(name)
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_requests_project")
        batch_op.drop_index("ix_usage_requests_key")
        batch_op.drop_index("ix_usage_requests_created")
        batch_op.drop_index("ix_usage_requests_upstream_id")
    op.drop_table("usage_requests")
