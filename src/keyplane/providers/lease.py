"""Single-leader polling in a fleet: a lease per provider in SQL.

Every instance of a fleet runs the poller, but only the holder of a provider's lease syncs it, so the
provider is read once per interval and a key is deleted by one instance only. The lease is one
``provider_leases`` row (holder, expires_at), taken with one atomic statement,
``UPDATE ... SET holder = me WHERE provider = p AND (expires_at < now OR holder = me)``: of two instances
racing for an expired lease, the database lets exactly one update match (PostgreSQL re-checks the
condition on the row the first one wrote; SQLite serializes writers). The holder renews it every
heartbeat (a third of its time to live), also while a sync runs; an instance that dies stops renewing and
another takes over once the lease has expired, within ``ttl + heartbeat`` (two thirds of
``sync_interval``), i.e. within one interval. A stopping instance lets go at once.

``synced_at`` (the start of the last background sync, whoever ran it) keeps the fleet's schedule: a new
leader syncs when the interval since then has passed, not again at once. Times come from each instance's
clock: keep the fleet's clocks in sync (NTP); a skew of a few seconds only shortens or lengthens a lease.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from sqlalchemy import case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane.providers.models import ProviderLease

MIN_TTL = 10.0  # seconds


def new_holder() -> str:
    """This poller's name in the lease: host, process and a random part (two servers in one process differ)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


def ttl_for(sync_interval: float) -> float:
    """Seconds a lease lives without renewal: half the interval (at least MIN_TTL), so that with heartbeats
    of a third of it a successor takes over within two thirds of an interval."""
    return max(sync_interval / 2, MIN_TTL)


@dataclass(frozen=True, slots=True)
class LeaseState:
    held: bool
    holder: str
    expires_at: float  # unix seconds
    synced_at: int | None


def _ms(t: float) -> int:
    return int(t * 1000)


async def _read(s: AsyncSession, provider: str) -> ProviderLease | None:
    return (await s.execute(select(ProviderLease).where(ProviderLease.provider == provider))).scalar()


async def acquire(
    sessions: async_sessionmaker[AsyncSession], provider: str, holder: str, now: float, ttl: float
) -> LeaseState:
    """Take the lease if it is free or expired, renew it if ``holder`` has it; say who holds it after."""
    exp = _ms(now + ttl)
    async with sessions() as s, s.begin():
        mine = ProviderLease.holder == holder
        res = await s.execute(
            update(ProviderLease)
            .where(ProviderLease.provider == provider, or_(ProviderLease.expires_at < _ms(now), mine))
            .values(
                holder=holder,
                expires_at=exp,
                # acquired_at moves only when the lease changes hands
                acquired_at=case((mine, ProviderLease.acquired_at), else_=_ms(now)),
            )
        )
        taken = getattr(res, "rowcount", 0) == 1
        row = await _read(s, provider)
        if row is not None:
            return LeaseState(taken, row.holder, row.expires_at / 1000, row.synced_at)
    try:
        async with sessions() as s, s.begin():
            s.add(ProviderLease(provider=provider, holder=holder, expires_at=exp, acquired_at=_ms(now)))
    except IntegrityError:  # another instance created the row first: it holds the lease
        async with sessions() as s:
            row = await _read(s, provider)
        assert row is not None
        return LeaseState(False, row.holder, row.expires_at / 1000, row.synced_at)
    return LeaseState(True, holder, exp / 1000, None)


async def renew(sessions: async_sessionmaker[AsyncSession], provider: str, holder: str, now: float, ttl: float) -> bool:
    """Extend the lease ``holder`` still has (False: it was lost to another instance)."""
    async with sessions() as s, s.begin():
        res = await s.execute(
            update(ProviderLease)
            .where(ProviderLease.provider == provider, ProviderLease.holder == holder)
            .values(expires_at=_ms(now + ttl))
        )
        return getattr(res, "rowcount", 0) == 1


async def mark_synced(sessions: async_sessionmaker[AsyncSession], provider: str, holder: str, at: int) -> bool:
    async with sessions() as s, s.begin():
        res = await s.execute(
            update(ProviderLease)
            .where(ProviderLease.provider == provider, ProviderLease.holder == holder)
            .values(synced_at=at)
        )
        return getattr(res, "rowcount", 0) == 1


async def release(sessions: async_sessionmaker[AsyncSession], provider: str, holder: str) -> None:
    """Let go (a stopping instance): the lease expires now, so another instance takes it at its next heartbeat."""
    async with sessions() as s, s.begin():
        await s.execute(
            update(ProviderLease)
            .where(ProviderLease.provider == provider, ProviderLease.holder == holder)
            .values(expires_at=0)
        )
