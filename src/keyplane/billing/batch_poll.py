"""The background poll of batches (billing's step, every minute; billing/batches.py step 4).

It cancels at the provider the batches whose key was revoked, suspended or deleted, or whose project is no
longer active (audited ``batch.cancelled``), and retrieves the batches not metered yet from their upstream,
metering the terminal ones (billing/batch_meter.py): a batch nobody reads through keyplane again is metered
all the same. Which keys and projects are stopped (:func:`stop_reason`) and the audit entry of a cancel
(:func:`audit_cancel`) are shared with the poll of fine-tuning jobs and eval runs (billing/job_poll.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select

from keyplane import errors
from keyplane.billing.batch_meter import TERMINAL, BatchMeter
from keyplane.billing.batch_upstream import BatchUpstream
from keyplane.store.models import BatchCost

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.billing")

POLL_SECONDS: Final = 300.0  # the background poll retrieves a batch not metered yet at most this often
POLL_BATCH: Final = 20  # batches retrieved per poll (every minute) and instance


class BatchPoller:
    """The background poll of one process; it needs the proxy's router and upstream client (Batches.attach)."""

    def __init__(self, rt: Runtime, metering: BatchMeter, upstream: BatchUpstream) -> None:
        self.rt = rt
        self.metering = metering
        self.upstream = upstream
        self.router: Any = None
        self.client: Any = None
        self.polled: dict[str, float] = {}  # batch id -> when the poll last retrieved it
        self.cancelled: set[str] = set()  # batch ids this instance asked the provider to cancel

    async def poll(self, limit: int = POLL_BATCH, min_age: int = 30) -> int:
        """Background (billing's step, every minute): cancel at the provider the batches whose key or project
        was stopped (:meth:`_stop`), then retrieve batches not metered yet from their upstream and meter the
        terminal ones, so that a batch nobody reads through keyplane again is metered all the same. Each batch
        at most once per POLL_SECONDS per instance; one that fails is logged and the others go on. Returns how
        many were metered."""
        if self.router is None or self.client is None:
            return 0
        now = self.rt.clock.now()
        async with self.rt.read() as s:
            rows = (
                await s.execute(
                    select(BatchCost.id, BatchCost.upstream, BatchCost.project_id, BatchCost.api_key_id)
                    .where(
                        BatchCost.object == "batch",
                        BatchCost.settled_at.is_(None),
                        BatchCost.created_at <= int(now) - min_age,
                    )
                    .order_by(BatchCost.created_at)
                    .limit(1000)
                )
            ).all()
        live = {bid for bid, _, _, _ in rows}
        self.polled = {k: v for k, v in self.polled.items() if k in live}
        self.cancelled &= live
        for bid, upstream, pid, kid in rows:
            if bid in self.metering.settled or bid in self.cancelled:
                continue
            why = self._stopped(kid, pid)
            if why is not None:
                try:
                    await self._stop(bid, upstream, pid, kid, why)
                except Exception as e:  # the upstream unreachable: tried again at the next poll
                    log.warning(
                        "batch %s: could not cancel it at the provider (%s: %s); will retry", bid, type(e).__name__, e
                    )
        done = 0
        for bid, upstream, pid, _ in rows:
            if limit <= 0:
                break
            if bid in self.metering.settled or now - self.polled.get(bid, 0.0) < POLL_SECONDS:
                continue
            limit -= 1
            self.polled[bid] = now
            obj = await self.upstream.get_json(self.router, self.client, upstream, pid, f"/v1/batches/{bid}")
            if isinstance(obj, dict) and obj.get("id") == bid and obj.get("status") in TERMINAL:
                try:
                    await self.metering.meter(bid, obj, self.router, self.client)
                except Exception as e:  # this one is tried again at a later poll; the others are metered now
                    log.error("batch %s: metering failed (%s: %s); will retry", bid, type(e).__name__, e)
                    continue
                done += 1
        return done

    def _stopped(self, key_id: str | None, project_id: str) -> str | None:
        """Why a batch's key or project may not spend any more, or None (:func:`stop_reason`)."""
        return stop_reason(self.rt, key_id, project_id)

    async def _stop(self, bid: str, upstream: str | None, project_id: str, key_id: str | None, why: str) -> None:
        """Cancel a running batch at its provider (``POST /v1/batches/{id}/cancel``), once per instance: what it
        produced until then is metered when it is terminal (cancelled), as any batch. Audited as
        ``batch.cancelled``."""
        status, body = await self.upstream.call(
            self.router, self.client, upstream, project_id, "POST", f"/v1/batches/{bid}/cancel"
        )
        if status >= 500 or status == 429:
            raise errors.upstream_error(f"The upstream answered {status} to the cancel.")
        self.cancelled.add(bid)  # answered: not asked again (a batch already finished answers an error)
        if status >= 400:
            log.info("batch %s: cancel answered %d (%s): %s", bid, status, why, body[:200].decode(errors="replace"))
            return
        log.warning("batch %s cancelled at the provider: %s", bid, why)
        await audit_cancel(
            self.rt, "batch.cancelled", bid, project_id, {"id": bid, "api_key_id": key_id, "reason": why}
        )


def stop_reason(rt: Runtime, key_id: str | None, project_id: str) -> str | None:
    """Why an object's key or project may not spend any more (revoked, suspended or deleted key, project not
    active; a federation rule's keyless key whose rule or provider is disabled or deleted: its workload tokens
    are refused, so what they started stops too), or None. Expired keys are not: a batch or job created before
    the expiry runs its course."""
    snap = rt.snapshot
    if not snap.loaded:
        return None
    if project_id:
        p = snap.projects.get(project_id)
        if p is None or p.status != "active":
            return f"its project {project_id} is {p.status if p is not None else 'deleted'}"
    if not key_id:
        return None
    e = snap.keys_by_id.get(key_id)
    if e is None:
        return f"its API key {key_id} was deleted"
    if e.revoked_at is not None:
        return f"its API key {key_id} was revoked" + (f" ({e.revoke_reason})" if e.revoke_reason else "")
    if e.suspended_at is not None:
        return f"its API key {key_id} is suspended" + (f" ({e.suspend_reason})" if e.suspend_reason else "")
    identity = rt.features.identity
    if identity is not None and (gone := identity.key_ended(key_id)):
        return f"its workload identity key {key_id} {gone}"
    return None


async def audit_cancel(rt: Runtime, event: str, oid: str, project_id: str, details: dict[str, object]) -> None:
    """The audit entry of a cancel the background poll sent for a stopped key or project (actor ``system``).
    A failure is logged, never raised: the cancel happened all the same."""
    from keyplane import control

    try:
        async with rt.sessions() as s, s.begin():
            await control.audit(
                s,
                control.SYSTEM_ACTOR,
                event,
                details,
                project_id=project_id or None,
                resource_id=oid,
                at=int(rt.clock.now()),
            )
    except Exception:
        log.exception("%s: the audit entry %s could not be written", oid, event)
