"""limits and billing

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("seq", _seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("used_micros", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "spend_limits",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("threshold_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("enforcing", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "spend_alerts",
        sa.Column("seq", _seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("threshold_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("interval", sa.String(16), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("subject_prefix", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("fired_period", sa.String(16), nullable=True),
    )
    op.create_index("ix_spend_alerts_scope", "spend_alerts", ["scope", "scope_id", "seq"])
    op.create_table(
        "rate_limits",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("max_requests_per_1_minute", sa.BigInteger(), nullable=True),
        sa.Column("max_tokens_per_1_minute", sa.BigInteger(), nullable=True),
        sa.Column("max_requests_per_1_day", sa.BigInteger(), nullable=True),
        sa.Column("max_tokens_per_1_day", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "spend_ledger",
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.String(64), primary_key=True),
        sa.Column("micros", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("requests", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "billing_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for name in ("billing_state", "spend_ledger", "rate_limits", "spend_alerts", "spend_limits", "credit_grants"):
        op.drop_table(name)
