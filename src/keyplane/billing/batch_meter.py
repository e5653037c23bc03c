"""Metering a terminal batch from its output, exactly once (billing/batches.py step 3).

A lease on the batch's row (``claimed_at``) and ``settled_at`` make it happen once, across polls and instances;
the records' ids (billing/batch_output.py) make a replay harmless in SQL. The records are appended to the
usage journal, the reservation is settled with their total (the rest released), and the kill switch sees the
batch's spend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import msgspec
import orjson
from sqlalchemy import select, update

from keyplane.billing.batch_output import Line, parse_output, usage_records
from keyplane.billing.batch_upstream import BatchUpstream, OutputUnreadable
from keyplane.limits import BudgetRef, Reservation
from keyplane.store.models import BatchCost

if TYPE_CHECKING:
    from keyplane.billing.engine import Billing

log = logging.getLogger("keyplane.billing")

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
LEASE_SECONDS: Final = 600  # a metering that died mid-way is taken over after this


class BatchMeter:
    """Meters terminal batches; remembers which are settled (a cache: polls after that cost nothing)."""

    def __init__(self, billing: Billing, upstream: BatchUpstream) -> None:
        self.b = billing
        self.rt = billing.rt
        self.upstream = upstream
        self.settled: set[str] = set()  # batch ids metered
        self._locks: dict[str, asyncio.Lock] = {}

    def busy(self, bid: str) -> bool:
        """The batch is being metered by this process, or was: its reservation is (being) settled here."""
        return bid in self.settled or bid in self._locks

    async def meter(self, bid: str, obj: dict[str, Any], router: Any, client: Any) -> None:
        lock = self._locks.setdefault(bid, asyncio.Lock())
        try:
            async with lock:
                if bid not in self.settled:
                    await self._meter(bid, obj, router, client)
        finally:
            if not lock.locked():
                self._locks.pop(bid, None)

    async def _meter(self, bid: str, obj: dict[str, Any], router: Any, client: Any) -> None:
        now = int(self.rt.clock.now())
        async with self.rt.sessions() as s, s.begin():
            claimed = await s.execute(
                update(BatchCost)
                .where(
                    BatchCost.id == bid,
                    BatchCost.object == "batch",
                    BatchCost.settled_at.is_(None),
                    (BatchCost.claimed_at.is_(None)) | (BatchCost.claimed_at < now - LEASE_SECONDS),
                )
                .values(claimed_at=now)
            )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            async with self.rt.read() as s:
                done = (await s.execute(select(BatchCost.settled_at).where(BatchCost.id == bid))).scalar_one_or_none()
            if done is not None:
                self.settled.add(bid)
            return  # unknown to keyplane, metered already, or being metered elsewhere
        try:
            async with self.rt.read() as s:
                row = (await s.execute(select(BatchCost).where(BatchCost.id == bid))).scalar_one()
            total = await self._record(row, obj, router, client)
        except BaseException:
            async with self.rt.sessions() as s, s.begin():  # let the next poll (here or elsewhere) try again
                await s.execute(update(BatchCost).where(BatchCost.id == bid).values(claimed_at=None))
            raise
        async with self.rt.sessions() as s, s.begin():
            await s.execute(
                update(BatchCost)
                .where(BatchCost.id == bid)
                .values(settled_at=int(self.rt.clock.now()), cost_micros=total)
            )
        self.settled.add(bid)
        if len(self.settled) > 100_000:
            self.settled.clear()

    async def _record(self, row: BatchCost, obj: dict[str, Any], router: Any, client: Any) -> int:
        """Write the usage records of the batch's output, settle its reservation; returns the total cost."""
        data = orjson.loads(row.data)
        out_id = obj.get("output_file_id")
        lines: list[Line] = []
        unread: str | None = None  # why the output cannot be read, ever: billed at the reservation, estimated
        if isinstance(out_id, str) and out_id:
            try:
                content = await self.upstream.get_bytes(
                    router, client, row.upstream, row.project_id, f"/v1/files/{out_id}/content"
                )
            except OutputUnreadable as e:
                unread = str(e)
            else:
                lines = parse_output(content, row.id)
        endpoint = str(data.get("endpoint") or obj.get("endpoint") or "/v1/chat/completions")
        snap = self.rt.snapshot
        entry = snap.keys_by_id.get(row.api_key_id or "")
        m = usage_records(
            row,
            data,
            endpoint,
            lines,
            unread,
            self.b.prices,
            snap.org_id or None,
            entry.owner_user_id if entry is not None else None,
            self.rt.clock.now(),
        )
        records, total, tokens_in, tokens_out = m.records, m.total, m.tokens_in, m.tokens_out
        if entry is not None and entry.lineage:  # a rotated key's: counted under its line, as it was reserved
            records = [msgspec.structs.replace(r, key_lineage=entry.lineage) for r in records]
        if unread is not None:
            log.warning("batch %s: %s; billed at its reservation, %d micro-dollars (estimated)", row.id, unread, total)
        usage = self.rt.pipeline.usage if self.rt.pipeline is not None else None
        append = getattr(usage, "append_records", None)
        if append is not None and records:
            append(records)
        res = Reservation(
            str(data.get("rid") or row.id),
            int(data.get("amount") or 0),
            0,
            tuple(BudgetRef(k, lim, ttl) for k, lim, ttl in data.get("budgets") or []),
            (),
        )
        try:
            await self.b.limiter.settle(res, total, 0)
        except Exception as e:  # queued for replay by the Redis backend; the SQL ledger has it from the records
            log.error("batch %s: settle failed (%s: %s); queued for replay", row.id, type(e).__name__, e)
        guard = self.rt.pipeline.guard if self.rt.pipeline is not None else None
        if guard is not None and entry is not None and records:  # the kill switch sees a batch's spend
            from keyplane.proxy.context import RequestContext

            ctx = RequestContext(
                row.id,
                entry,
                row.project_id,
                endpoint,
                "POST",
                status=200,
                prompt_tokens=tokens_in,
                completion_tokens=tokens_out,
                cost_micros=total,
            )
            try:
                guard.observe(ctx)
            except Exception:
                log.exception("batch %s: the kill switch could not observe it", row.id)
        log.info(
            "batch %s metered: %d requests, %d micro-dollars (reserved %s)",
            row.id,
            len(records),
            total,
            data.get("amount"),
        )
        return total
