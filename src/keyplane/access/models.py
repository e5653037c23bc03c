"""SQL table of access policies: model permissions, hosted tool permissions, IP allowlists.

One row per (kind, scope, target): kind ``model`` | ``tools`` | ``ip``; scope ``org`` | ``project`` | ``key``;
``value`` is the policy as JSON (see policy.py for each kind's shape).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keyplane.store.models import Base


class AccessPolicy(Base):
    __tablename__ = "access_policies"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    target_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class ExpiryNotice(Base):
    """A ``key.expiring`` notice sent (or claimed by the instance sending it): one per key and threshold,
    whichever instance of a fleet gets there first (the primary key decides)."""

    __tablename__ = "access_expiry_notices"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    days: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sent_at: Mapped[int] = mapped_column(BigInteger)


async def copy_key_policies(s: AsyncSession, old_key_id: str, new_key_id: str, now: int) -> None:
    """A rotated key keeps its own model, hosted tool and IP policies (control.rotate_key)."""
    rows = (
        (await s.execute(select(AccessPolicy).where(AccessPolicy.scope == "key", AccessPolicy.target_id == old_key_id)))
        .scalars()
        .all()
    )
    s.add_all(
        [AccessPolicy(kind=r.kind, scope="key", target_id=new_key_id, value=r.value, updated_at=now) for r in rows]
    )
