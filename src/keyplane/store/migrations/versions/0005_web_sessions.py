"""dashboard sign-in state shared by the fleet: ended sessions, used TOTP steps, sign-in throttle

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_session_ends",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_web_session_ends_expires", "web_session_ends", ["expires_at"], unique=False)
    op.create_table(
        "web_totp_steps",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "step"),
    )
    op.create_index("ix_web_totp_steps_expires", "web_totp_steps", ["expires_at"], unique=False)
    op.create_table(
        "web_login_throttle",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_web_login_throttle_last", "web_login_throttle", ["last_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_web_login_throttle_last", table_name="web_login_throttle")
    op.drop_table("web_login_throttle")
    op.drop_index("ix_web_totp_steps_expires", table_name="web_totp_steps")
    op.drop_table("web_totp_steps")
    op.drop_index("ix_web_session_ends_expires", table_name="web_session_ends")
    op.drop_table("web_session_ends")
