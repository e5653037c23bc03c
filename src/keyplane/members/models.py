"""SQL tables of project membership (docs/members-and-roles.md), on the shared Base."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class ProjectUser(Base):
    """A user's membership of a project, with its project role (owner | member). Organization owners
    reach every project without a row here; anyone else reaches only the projects they are a member of."""

    __tablename__ = "project_users"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # owner | member
    added_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("project_id", "user_id", name="uq_project_users_member"),
        Index("ix_project_users_user", "user_id"),
    )


class Invite(Base):
    """An invitation to the organization. Accepted by setting a password through a one-time link (the
    token is stored only as a keyed digest); accepting adds the user and their project memberships."""

    __tablename__ = "invites"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))  # owner | reader (the organization role)
    projects: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{"id", "role"}]
    token_digest: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)  # None once used
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # the user who sent it (None: the CLI, or before 0016); it cannot be accepted once they lack the authority
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_invites_email", "email"),)


class CustomRole(Base):
    """A custom organization role: a name and a set of permissions from the one permission table
    (keyplane.members.permissions). The predefined owner and reader roles are not stored."""

    __tablename__ = "custom_roles"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    permissions: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of permission names
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RoleAssignment(Base):
    """A custom role held by a user directly (principal_type ``user``) or by every member of a group
    (principal_type ``group``)."""

    __tablename__ = "role_assignments"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    role_id: Mapped[str] = mapped_column(String(64))
    principal_type: Mapped[str] = mapped_column(String(16))  # user | group
    principal_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("role_id", "principal_type", "principal_id", name="uq_role_assignments"),
        Index("ix_role_assignments_principal", "principal_type", "principal_id"),
    )


class Group(Base):
    """A group of organization users; the custom roles assigned to it reach every member."""

    __tablename__ = "user_groups"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)


class GroupUser(Base):
    """A user's membership of a group."""

    __tablename__ = "group_users"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("group_id", "user_id", name="uq_group_users_member"),
        Index("ix_group_users_user", "user_id"),
    )


class ProjectGroup(Base):
    """A group as a project member (projects.groups): every user of the group reaches the project, with
    the group's project role (owner | member), as a direct member would."""

    __tablename__ = "project_groups"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # owner | member
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("project_id", "group_id", name="uq_project_groups_member"),
        Index("ix_project_groups_group", "group_id"),
    )


class ProjectRole(Base):
    """A project-scoped custom role (projects.roles): ``api.project.*`` permissions that act inside its
    project only. Kept apart from the organization's custom roles so that no query of those can ever read
    one as organization-wide."""

    __tablename__ = "project_roles"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    permissions: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of api.project.* names
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_project_roles_name"),)


class ProjectRoleAssignment(Base):
    """A project role held in its project by a project member (principal_type ``user``) or by a group that
    is a project member (``group``)."""

    __tablename__ = "project_role_assignments"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    role_id: Mapped[str] = mapped_column(String(64))
    principal_type: Mapped[str] = mapped_column(String(16))  # user | group
    principal_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("role_id", "principal_type", "principal_id", name="uq_project_role_assignments"),
        Index("ix_project_role_assignments_principal", "principal_type", "principal_id"),
        Index("ix_project_role_assignments_project", "project_id"),
    )
