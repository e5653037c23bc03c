"""The durable spend ledger: settled costs go to SQL in batches, off the request path.

Settle adds each cost to an in-memory batch (``add``: a few dict updates); a background task writes
the batch every ``ledger_flush_seconds`` in one transaction: one upsert per (period, scope, id) row
of ``spend_ledger``, rows in a fixed order so that instances flushing at once cannot deadlock, and
the credit used allocated to the grants (soonest-expiring grant first). A batch that fails to write
is merged back and retried, never dropped. On start the current month's rows seed the budget
counters, so a restart does not forget spend (and, in fleet mode, neither does a flushed Redis).

Budget counter keys are ``<period>:<scope>:<id>``: "2026-01:project:proj_...", and
"all:credit:<org id>" for the credit used.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.billing.models import CreditGrant, SpendLedger

log = logging.getLogger("keyplane.billing")

CREDIT = "credit"


def upsert(dialect: str) -> Any:
    """The dialect's INSERT with ON CONFLICT DO UPDATE (SQLite and PostgreSQL share the syntax)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.pending: dict[str, list[int]] = {}  # budget key -> [micros, requests]
        self.credit_since: float | None = None  # when the oldest unflushed credit use happened

    def add(self, keys: list[str], cost: int, now: float) -> None:
        pending = self.pending
        for k in keys:
            row = pending.get(k)
            if row is None:
                pending[k] = [cost, 1]
            else:
                row[0] += cost
                row[1] += 1
            if k.startswith("all:") and self.credit_since is None:
                self.credit_since = now

    def unflushed(self, key: str) -> int:
        row = self.pending.get(key)
        return row[0] if row else 0

    async def flush(self, now: float) -> dict[str, int]:
        """Write the batch; returns the credit allocated to each grant id (to update the in-memory copy)."""
        if not self.pending:
            return {}
        batch, self.pending = self.pending, {}
        since, self.credit_since = self.credit_since, None
        try:
            return await self._write(batch, since if since is not None else now, int(now))
        except BaseException:
            for k, (m, n) in batch.items():  # keep it for the next flush
                row = self.pending.setdefault(k, [0, 0])
                row[0] += m
                row[1] += n
            if since is not None and (self.credit_since is None or since < self.credit_since):
                self.credit_since = since
            raise

    async def _write(self, batch: dict[str, list[int]], credit_at: float, t: int) -> dict[str, int]:
        insert = upsert(self.engine.dialect.name)
        allocated: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        credit = 0
        for key in sorted(batch):
            micros, n = batch[key]
            period, scope, sid = key.split(":", 2)
            if scope == CREDIT:
                credit += micros
            else:
                rows.append({"period": period, "scope": scope, "scope_id": sid, "micros": micros, "requests": n,
                             "updated_at": t})
        async with self.engine.begin() as conn:
            if rows:
                stmt = insert(SpendLedger)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["period", "scope", "scope_id"],
                    set_={"micros": SpendLedger.micros + stmt.excluded.micros,
                          "requests": SpendLedger.requests + stmt.excluded.requests,
                          "updated_at": stmt.excluded.updated_at})
                await conn.execute(stmt, rows)
            if credit:
                allocated = await self._allocate(conn, credit, credit_at)
        return allocated

    @staticmethod
    async def _allocate(conn: Any, micros: int, at: float) -> dict[str, int]:
        """Draw ``micros`` from the grants that were live at ``at``, soonest-expiring first."""
        rows = (await conn.execute(
            select(CreditGrant.id, CreditGrant.amount_cents, CreditGrant.used_micros, CreditGrant.expires_at)
            .order_by(CreditGrant.expires_at.is_(None), CreditGrant.expires_at, CreditGrant.seq))).all()
        live = [r for r in rows if r.expires_at is None or r.expires_at > at] or rows[-1:]
        out: dict[str, int] = {}
        left = micros
        for i, r in enumerate(live):
            room = max(0, r.amount_cents * 10_000 - r.used_micros)
            take = left if i == len(live) - 1 else min(left, room)  # an overdraft lands on the last one
            if take:
                out[r.id] = take
                left -= take
            if not left:
                break
        for gid, take in out.items():
            await conn.execute(update(CreditGrant).where(CreditGrant.id == gid)
                               .values(used_micros=CreditGrant.used_micros + take))
        return out


async def period_spend(engine: AsyncEngine, period: str) -> dict[str, int]:
    """Budget key -> micro-dollars recorded for ``period``, and the credit used so far."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(SpendLedger.scope, SpendLedger.scope_id, SpendLedger.micros)
                                   .where(SpendLedger.period == period))).all()
    return {f"{period}:{r.scope}:{r.scope_id}": int(r.micros) for r in rows}
