"""The durable spend ledger, derived from the usage journal so that it never disagrees with it.

Settled costs are not written to SQL on their own: each request's cost travels in its usage record
(the journal, DESIGN.md hot-path rule 6), and the usage applier's transaction that inserts a record
into ``usage_requests`` also adds its cost to ``spend_ledger`` (one upsert per (period, scope, id)
row, in a fixed order so that instances applying at once cannot deadlock) and allocates the credit
it used to the grants (soonest-expiring grant first, among those live when the request ran). The
insert is idempotent by request id (ON CONFLICT DO NOTHING), and the ledger only counts the records
really inserted, so:

- a record is in the ledger if and only if it is in ``usage_requests``: nothing is counted twice,
  whatever replays the journal (a restart, an orphan replay by another process, a crash between
  the commit and the journal's "applied" offset);
- what the ledger does not hold yet is exactly the journal's unapplied records. A kill -9 (even
  during a PostgreSQL outage) loses nothing: the next start counts them (:func:`snapshot`) and the
  applier writes them.

:func:`snapshot` is what budgets are seeded from: the month's ledger rows plus the unapplied journal
records, the records' ids checked against ``usage_requests`` in the same read transaction.

Budget counter keys are ``<period>:<scope>:<id>``: "2026-01:project:proj_...", and
"all:credit:<org id>" for the credit used. A record's period is the month in which the request
started (completion time less its latency), the month admission charged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keyplane.billing.models import CreditGrant, SpendLedger
from keyplane.billing.state import period_of
from keyplane.usage.journal import Record

log = logging.getLogger("keyplane.billing")

CREDIT = "credit"
_ID_CHUNK = 500


def upsert(dialect: str) -> Any:
    """The dialect's INSERT with ON CONFLICT DO UPDATE (SQLite and PostgreSQL share the syntax)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def started(rec: Record) -> float:
    return rec.t - rec.latency_ms / 1000


def budget_keys(rec: Record) -> tuple[str, str, str]:
    """The api_key, project and organization counters a record's cost went to (as admission's plan)."""
    period = period_of(started(rec))
    return (
        f"{period}:api_key:{rec.key_lineage or rec.key_id or ''}",  # a rotated key's: its line's (KeyEntry.budget_id)
        f"{period}:project:{rec.project_id or ''}",
        f"{period}:organization:{rec.org_id or ''}",
    )


def add_spend(out: dict[str, int], records: Iterable[Record], credit_key: str | None) -> int:
    """Add the records' costs to ``out`` (budget key -> micro-dollars); returns how many had a cost."""
    n = 0
    for r in records:
        cost = r.cost_micros
        if cost <= 0:
            continue
        n += 1
        for k in budget_keys(r):
            out[k] = out.get(k, 0) + cost
        if credit_key is not None:
            out[credit_key] = out.get(credit_key, 0) + cost
    return n


class Ledger:
    """The apply step (run by the usage applier inside its transaction) and what the engine asks of SQL.

    ``credit_key`` says, at apply time, whether the organization's credit is counted (None: not).
    """

    def __init__(self, engine: AsyncEngine, credit_key: Callable[[], str | None] = lambda: None) -> None:
        self.engine = engine
        self.credit_key = credit_key
        self.applied = 0  # records with a cost this process wrote to the ledger

    def register(self) -> None:
        from keyplane.usage.applier import APPLY_STEPS

        steps = APPLY_STEPS.setdefault(self.engine, [])
        if self.apply not in steps:
            steps.append(self.apply)

    def unregister(self) -> None:
        from keyplane.usage.applier import APPLY_STEPS

        steps = APPLY_STEPS.get(self.engine, [])
        if self.apply in steps:
            steps.remove(self.apply)

    def apply(self, conn: Connection, records: list[Record]) -> None:
        """Add the costs of ``records`` (just inserted into usage_requests) to the ledger, in ``conn`` (the usage
        applier's transaction: an apply step runs blocking, keyplane.usage.apply_sql)."""
        costs = [r for r in records if r.cost_micros > 0]
        if not costs:
            return
        credit_key = self.credit_key()
        sums: dict[str, list[int]] = {}
        for r in costs:
            for k in budget_keys(r):
                row = sums.setdefault(k, [0, 0])
                row[0] += r.cost_micros
                row[1] += 1
        t = int(max(r.t for r in costs))
        rows = []
        for key in sorted(sums):
            period, scope, sid = key.split(":", 2)
            micros, n = sums[key]
            rows.append(
                {"period": period, "scope": scope, "scope_id": sid, "micros": micros, "requests": n, "updated_at": t}
            )
        insert = upsert(conn.dialect.name)
        stmt = insert(SpendLedger)
        stmt = stmt.on_conflict_do_update(
            index_elements=["period", "scope", "scope_id"],
            set_={
                "micros": SpendLedger.micros + stmt.excluded.micros,
                "requests": SpendLedger.requests + stmt.excluded.requests,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        conn.execute(stmt, rows)
        if credit_key is not None:
            allocate(conn, sum(r.cost_micros for r in costs), min(started(r) for r in costs))
        self.applied += len(costs)


def allocate(conn: Connection, micros: int, at: float) -> dict[str, int]:
    """Draw ``micros`` from the grants that were live at ``at``, soonest-expiring first."""
    rows = conn.execute(
        select(CreditGrant.id, CreditGrant.amount_cents, CreditGrant.used_micros, CreditGrant.expires_at).order_by(
            CreditGrant.expires_at.is_(None), CreditGrant.expires_at, CreditGrant.seq
        )
    ).all()
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
        conn.execute(
            update(CreditGrant).where(CreditGrant.id == gid).values(used_micros=CreditGrant.used_micros + take)
        )
    return out


async def period_spend(engine: AsyncEngine, period: str) -> dict[str, int]:
    """Budget key -> micro-dollars recorded in the ledger for ``period``."""
    async with engine.connect() as conn:
        return await _period_rows(conn, period)


async def _period_rows(conn: AsyncConnection, period: str) -> dict[str, int]:
    rows = (
        await conn.execute(
            select(SpendLedger.scope, SpendLedger.scope_id, SpendLedger.micros).where(SpendLedger.period == period)
        )
    ).all()
    return {f"{period}:{r.scope}:{r.scope_id}": int(r.micros) for r in rows}


@dataclass(slots=True)
class Snapshot:
    """The month's spend as SQL and the journal hold it together (budget key -> micro-dollars)."""

    spent: dict[str, int]
    credit_used: int  # what the grants record as used
    unapplied: int  # records with a cost still only in the journal, counted in ``spent``
    writers: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)  # dead writers whose holds are counted (usage/holds.py)


async def snapshot(
    engine: AsyncEngine,
    period: str,
    folder: Path | None,
    credit_key: str | None,
    before_us: int | None = None,
    writer: str | None = None,
    journal_only: bool = False,
) -> Snapshot:
    """Ledger rows of ``period`` plus the journal's unapplied records (of this period), in one read.

    The journal is read first, the store after, in one transaction: a record applied between the two
    reads is found in usage_requests (and is then in the ledger rows read in the same snapshot), so
    it is counted once. ``before_us``: only records of requests finished before that time (µs).
    """
    import asyncio

    from keyplane.usage.holds import dead_holds_in
    from keyplane.usage.journal_tail import unapplied_records
    from keyplane.usage.models import UsageRequest

    pending = await asyncio.to_thread(unapplied_records, folder) if folder is not None else []
    held: dict[str, list[Record]] = {}
    if folder is not None and not journal_only:
        # Dead writers' holds (usage/holds.py): requests they had running, billed at their reservations. After every
        # journaled record, so that one whose request did finish is counted once, as finished (the ids below).
        held = await asyncio.to_thread(dead_holds_in, folder)
        pending += [(w, r) for w, rs in held.items() for r in rs]
    recs = [
        (w, r)
        for w, r in pending
        if r.cost_micros > 0 and (before_us is None or r.t * 1e6 < before_us) and (writer is None or w == writer)
    ]
    async with engine.connect() as conn, conn.begin():
        spent = {} if journal_only else await _period_rows(conn, period)
        grants = [] if journal_only else (await conn.execute(select(CreditGrant.used_micros))).scalars().all()
        applied: set[str] = set()
        ids = list({r.id for _, r in recs})
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            applied.update((await conn.execute(select(UsageRequest.id).where(UsageRequest.id.in_(chunk)))).scalars())
    seen: set[str] = set()
    todo: list[Record] = []
    writers: set[str] = set()
    for w, r in recs:
        if r.id in applied or r.id in seen:
            continue
        seen.add(r.id)
        writers.add(w)
        if budget_keys(r)[0].startswith(period + ":") or credit_key is not None:
            todo.append(r)
    extra: dict[str, int] = {}
    n = add_spend(extra, todo, credit_key)
    for k, v in extra.items():
        if k == credit_key or k.startswith(period + ":"):
            spent[k] = spent.get(k, 0) + v
    used = sum(int(u) for u in grants)
    if credit_key is not None:
        spent[credit_key] = used + extra.get(credit_key, 0)
    return Snapshot(spent, used, n, writers, set(held))
