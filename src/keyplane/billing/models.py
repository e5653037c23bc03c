"""SQL tables of limits and billing (migration 0002). Money is integer: cents where the API shows
cents, micro-dollars where costs accumulate. Times are unix seconds."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base, SeqType


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8), default="usd")
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What was drawn from this grant, allocated by the ledger flush (soonest-expiring grant first).
    used_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class SpendLimit(Base):
    """A hard monthly spend limit of the organization, a project or a key (scope + scope_id)."""

    __tablename__ = "spend_limits"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # organization | project | api_key
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    threshold_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    interval: Mapped[str] = mapped_column(String(16), default="month")
    # keyplane: a limit can be kept without refusing requests (enforcement.status "inactive").
    enforcing: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class SpendAlert(Base):
    __tablename__ = "spend_alerts"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # organization | project
    scope_id: Mapped[str] = mapped_column(String(64))
    threshold_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    interval: Mapped[str] = mapped_column(String(16), default="month")
    recipients: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of email addresses
    subject_prefix: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # The period ("2026-01") it last fired in: it fires once per interval, claimed by one instance.
    fired_period: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (Index("ix_spend_alerts_scope", "scope", "scope_id", "seq"),)


class RateLimitOverride(Base):
    """Limits set through the API for a (project or key, model); a null field keeps the default."""

    __tablename__ = "rate_limits"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # project | api_key
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64))
    max_requests_per_1_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_tokens_per_1_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_requests_per_1_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_tokens_per_1_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class SpendLedger(Base):
    """Spend per period and scope, in micro-dollars: the durable side of the budget counters.

    period is "YYYY-MM" (UTC) for the monthly spend of the organization, projects and keys, and
    "all" for the organization's credit used."""

    __tablename__ = "spend_ledger"
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    micros: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class BillingState(Base):
    """Small named values: the organization's usage tier and when it was reached."""

    __tablename__ = "billing_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


async def copy_key_limits(s: AsyncSession, old_key_id: str, new_key_id: str, now: int) -> None:
    """A rotated key keeps its own spend limit and rate limits (control.rotate_key); the old and new values count
    against one counter, the line's (KeyEntry.budget_id), so the limits hold across the rotation."""
    table: type[SpendLimit] | type[RateLimitOverride]
    for table in (SpendLimit, RateLimitOverride):
        rows = (await s.execute(select(table).where(table.scope == "api_key", table.scope_id == old_key_id))).scalars()
        for row in rows:
            values = {c.key: getattr(row, c.key) for c in table.__table__.columns}
            values.update(scope_id=new_key_id, updated_at=now)
            if "created_at" in values:
                values["created_at"] = now
            s.add(table(**values))
