"""custom roles, role assignments, groups, their members and their projects

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "custom_roles",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("permissions", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "role_assignments",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("role_id", sa.String(length=64), nullable=False),
        sa.Column("principal_type", sa.String(length=16), nullable=False),
        sa.Column("principal_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("role_id", "principal_type", "principal_id", name="uq_role_assignments"),
    )
    op.create_index(
        "ix_role_assignments_principal", "role_assignments", ["principal_type", "principal_id"], unique=False
    )
    op.create_table(
        "user_groups",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_table(
        "group_users",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("group_id", "user_id", name="uq_group_users_member"),
    )
    op.create_index("ix_group_users_user", "group_users", ["user_id"], unique=False)
    op.create_table(
        "project_groups",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("project_id", "group_id", name="uq_project_groups_member"),
    )
    op.create_index("ix_project_groups_group", "project_groups", ["group_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_project_groups_group", table_name="project_groups")
    op.drop_table("project_groups")
    op.drop_index("ix_group_users_user", table_name="group_users")
    op.drop_table("group_users")
    op.drop_table("user_groups")
    op.drop_index("ix_role_assignments_principal", table_name="role_assignments")
    op.drop_table("role_assignments")
    op.drop_table("custom_roles")
