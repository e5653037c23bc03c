"""SQL tables of the kill switch: rules changed over the API, and what the rules did (events)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class GuardRuleRow(Base):
    """A rule created or changed over the API; ``definition`` NULL is a deletion of a config rule."""

    __tablename__ = "guard_rules"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON of config.GuardRule
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class GuardEvent(Base):
    """One firing of a rule: what it saw, what it did."""

    __tablename__ = "guard_events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    rule: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mode: Mapped[str] = mapped_column(String(16))  # revoke | suspend | alert
    action: Mapped[str] = mapped_column(String(16))  # revoked | suspended | alerted | none (dry run / already off)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    figures: Mapped[str] = mapped_column(Text)  # JSON
    message: Mapped[str] = mapped_column(Text)
    resolved_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ix_guard_events_key", "key_id"),
        Index("ix_guard_events_open", "action", "resolved_at"),
    )
