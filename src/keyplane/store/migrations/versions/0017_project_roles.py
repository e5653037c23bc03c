"""project-scoped custom roles and their assignments; the sender of an invite

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "project_roles",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("permissions", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_project_roles_name"),
    )
    op.create_table(
        "project_role_assignments",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("role_id", sa.String(length=64), nullable=False),
        sa.Column("principal_type", sa.String(length=16), nullable=False),
        sa.Column("principal_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("role_id", "principal_type", "principal_id", name="uq_project_role_assignments"),
    )
    op.create_index(
        "ix_project_role_assignments_principal",
        "project_role_assignments",
        ["principal_type", "principal_id"],
        unique=False,
    )
    op.create_index("ix_project_role_assignments_project", "project_role_assignments", ["project_id"], unique=False)
    op.add_column("invites", sa.Column("created_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invites") as batch:
        batch.drop_column("created_by")
    op.drop_index("ix_project_role_assignments_project", table_name="project_role_assignments")
    op.drop_index("ix_project_role_assignments_principal", table_name="project_role_assignments")
    op.drop_table("project_role_assignments")
    op.drop_table("project_roles")
