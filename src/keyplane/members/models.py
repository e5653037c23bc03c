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

    __table_args__ = (Index("ix_invites_email", "email"),)
