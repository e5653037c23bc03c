"""Fine-tuning jobs and eval runs of stopped keys, cancelled at the provider (billing's background step, beside
the batches' poll: billing/batch_poll.py; docs/limits-and-billing.md "Jobs of stopped keys").

A fine-tuning job or an eval run goes on at the provider (training or grading, and billing) for hours after the
call that started it, whatever becomes of the key. So each one started through keyplane (``POST
/v1/fine_tuning/jobs``, ``POST /v1/evals/{eval_id}/runs``: tenancy's after hook calls :meth:`JobPoller.started`
before the client sees its id) is kept in ``batch_costs`` (object ``fine_tuning.job`` or ``eval.run``: nothing
estimated, reserved or metered; every reader of batches and batch files selects its own object) with the key and
project that started it and the upstream that holds it. Every minute the poll

- cancels at the provider the unfinished ones whose key was revoked, suspended or deleted, or whose project is no
  longer active, once per instance, audited ``fine_tuning.job.cancelled`` / ``eval.run.cancelled`` (as
  ``batch.cancelled``): a cancel the upstream did not take (5xx, 429, unreachable) is sent again at the next
  poll, a 4xx answer is final;
- retrieves each one at most every POLL_SECONDS and marks it done (``settled_at``) once it is terminal or gone
  (404, 410), so that the poll's work stays the jobs still running.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keyplane.billing.batch_poll import POLL_BATCH, POLL_SECONDS, audit_cancel, stop_reason
from keyplane.billing.batch_upstream import BatchUpstream
from keyplane.store.models import BatchCost

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.billing")

FINE_TUNING_JOB: Final = "fine_tuning.job"
EVAL_RUN: Final = "eval.run"
# A fine-tuning job ends succeeded, failed or cancelled; an eval run completed, failed or canceled (one l).
TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled", "completed", "canceled"})
_AUDIT: Final = {FINE_TUNING_JOB: "fine_tuning.job.cancelled", EVAL_RUN: "eval.run.cancelled"}
_EVAL_RUNS: Final = re.compile(r"^/v1/evals/([^/]{1,128})/runs$")
# The provider's ids go into the paths the poll calls: only the characters of OpenAI's ids (proxy/canonical.py).
_ID: Final = re.compile(r"[A-Za-z0-9\-._~:@+=,]{1,128}")


@dataclass(frozen=True, slots=True)
class Job:
    """A fine-tuning job or eval run kept for the poll: what it takes to retrieve or cancel it at its upstream."""

    id: str
    kind: str  # FINE_TUNING_JOB or EVAL_RUN
    eval_id: str  # the eval an eval run belongs to ("" for a fine-tuning job)
    project_id: str
    key_id: str | None
    upstream: str | None

    @property
    def path(self) -> str:
        """Its path at the provider; ``/cancel`` appended cancels it (the openai SDK's jobs and runs resources)."""
        if self.kind == EVAL_RUN:
            return f"/v1/evals/{self.eval_id}/runs/{self.id}"
        return f"/v1/fine_tuning/jobs/{self.id}"


def started_job(
    endpoint: str, obj: dict[str, object], project_id: str, key_id: str, upstream: str | None
) -> Job | None:
    """The job or run a successful ``POST`` answer started, or None: the answer's object must be what the endpoint
    creates, so that nothing else is ever cancelled under its id."""
    oid = obj.get("id")
    if not isinstance(oid, str) or _ID.fullmatch(oid) is None:
        return None
    if endpoint == "/v1/fine_tuning/jobs" and obj.get("object") == FINE_TUNING_JOB:
        return Job(oid, FINE_TUNING_JOB, "", project_id, key_id, upstream)
    m = _EVAL_RUNS.match(endpoint)
    if m is not None and obj.get("object") == EVAL_RUN:  # the eval of the path: the one tenancy checked is owned
        return Job(oid, EVAL_RUN, m.group(1), project_id, key_id, upstream)
    return None


class JobPoller:
    """The jobs and runs of one process; it needs the proxy's router and upstream client (Batches.attach)."""

    def __init__(self, rt: Runtime, upstream: BatchUpstream) -> None:
        self.rt = rt
        self.upstream = upstream
        self.router: Any = None
        self.client: Any = None
        self.polled: dict[str, float] = {}  # job or run id -> when the poll last retrieved it
        self.cancelled: set[str] = set()  # ids this instance asked the provider to cancel

    async def started(
        self, endpoint: str, obj: dict[str, object], project_id: str, key_id: str, upstream: str | None
    ) -> None:
        """A successful ``POST`` answer (tenancy's after hook, before the client sees it): the job or run it
        started is kept with the key that started it. A second record of the same id does nothing."""
        job = started_job(endpoint, obj, project_id, key_id, upstream)
        if job is None:
            return
        values: dict[str, object] = {c.name: None for c in BatchCost.__table__.columns}
        values.update(
            id=job.id,
            object=job.kind,
            project_id=job.project_id,
            api_key_id=job.key_id,
            lines=0,
            data=orjson.dumps({"eval_id": job.eval_id} if job.eval_id else {}).decode(),
            upstream=job.upstream,
            created_at=int(self.rt.clock.now()),
            cost_micros=0,
        )
        ins = pg_insert if self.rt.engine.dialect.name == "postgresql" else sqlite_insert
        async with self.rt.sessions() as s, s.begin():
            await s.execute(ins(BatchCost).values(**values).on_conflict_do_nothing(index_elements=["id"]))

    async def cancel_unkept(
        self, endpoint: str, obj: dict[str, object], project_id: str, key_id: str, upstream: str | None
    ) -> None:
        """A job or run just started that could not be kept (:meth:`started` failed): cancelled at once, since
        no poll would cancel it once its key is stopped. A cancel that fails is logged (an operator must act)."""
        job = started_job(endpoint, obj, project_id, key_id, upstream)
        if job is None or self.router is None or self.client is None:
            return
        try:
            status, _ = await self.upstream.call(
                self.router, self.client, job.upstream, job.project_id, "POST", job.path + "/cancel"
            )
        except Exception as e:
            status = 0
            log.error("%s %s: could not cancel it (%s: %s)", job.kind, job.id, type(e).__name__, e)
        if not 200 <= status < 300:
            log.error(
                "%s %s of key %s runs at the provider untracked: keyplane could neither record nor cancel it; "
                "cancel it there (a revocation of the key will not)",
                job.kind,
                job.id,
                key_id,
            )

    async def poll(self, limit: int = POLL_BATCH, min_age: int = 30) -> int:
        """Background (billing's step, every minute): cancel the unfinished jobs and runs whose key or project was
        stopped, then retrieve up to ``limit`` of them (each at most once per POLL_SECONDS per instance) and stop
        tracking the finished ones. Returns how many stopped being tracked."""
        if self.router is None or self.client is None:
            return 0
        now = self.rt.clock.now()
        jobs = await self._unfinished(int(now) - min_age)
        live = {j.id for j in jobs}
        self.polled = {k: v for k, v in self.polled.items() if k in live}
        self.cancelled &= live
        ended: set[str] = set()
        for j in jobs:
            why = None if j.id in self.cancelled else stop_reason(self.rt, j.key_id, j.project_id)
            if why is not None and await self._cancel(j, why):
                ended.add(j.id)
        done = len(ended)
        for j in jobs:
            if limit <= 0:
                break
            if j.id in ended or now - self.polled.get(j.id, 0.0) < POLL_SECONDS:
                continue
            limit -= 1
            self.polled[j.id] = now
            if await self._finished(j):
                done += 1
        return done

    async def _unfinished(self, created_by: int) -> list[Job]:
        """The oldest jobs and runs not done yet, created at ``created_by`` or before."""
        async with self.rt.read() as s:
            rows = (
                await s.execute(
                    select(
                        BatchCost.id,
                        BatchCost.object,
                        BatchCost.data,
                        BatchCost.project_id,
                        BatchCost.api_key_id,
                        BatchCost.upstream,
                    )
                    .where(
                        BatchCost.object.in_((FINE_TUNING_JOB, EVAL_RUN)),
                        BatchCost.settled_at.is_(None),
                        BatchCost.created_at <= created_by,
                    )
                    .order_by(BatchCost.created_at)
                    .limit(1000)
                )
            ).all()
        jobs = []
        for oid, kind, data, pid, kid, upstream in rows:
            eval_id = str(_field(data, "eval_id") or "")
            if kind == EVAL_RUN and not eval_id:
                log.warning("eval run %s: its row names no eval; it cannot be polled", oid)
                continue
            jobs.append(Job(oid, kind, eval_id, pid, kid, upstream))
        return jobs

    async def _cancel(self, job: Job, why: str) -> bool:
        """Cancel at its provider a job or run whose key or project is stopped; True when the poll is done with it
        (the cancel's answer is terminal, or a 4xx: asking again would not change it)."""
        try:
            status, body = await self.upstream.call(
                self.router, self.client, job.upstream, job.project_id, "POST", job.path + "/cancel"
            )
        except Exception as e:  # the upstream unreachable: tried again at the next poll
            log.warning("%s %s: could not cancel it (%s: %s); will retry", job.kind, job.id, type(e).__name__, e)
            return False
        if status >= 500 or status == 429:
            log.warning("%s %s: the upstream answered %d to its cancel; will retry", job.kind, job.id, status)
            return False
        if status >= 400:  # finished already, gone, or refused
            log.info(
                "%s %s: cancel answered %d (%s): %s", job.kind, job.id, status, why, body[:200].decode(errors="replace")
            )
            return await self._done(job)
        self.cancelled.add(job.id)
        log.warning("%s %s cancelled at the provider: %s", job.kind, job.id, why)
        details: dict[str, object] = {"id": job.id, "api_key_id": job.key_id, "reason": why}
        if job.eval_id:
            details["eval_id"] = job.eval_id
        await audit_cancel(self.rt, _AUDIT[job.kind], job.id, job.project_id, details)
        if _field(body, "status") in TERMINAL:
            return await self._done(job)
        return False  # cancelling: the retrieval marks it done once it is terminal

    async def _finished(self, job: Job) -> bool:
        """Retrieve a job or run from its upstream; True when it is terminal or gone (404, 410): then done."""
        try:
            status, body = await self.upstream.call(
                self.router, self.client, job.upstream, job.project_id, "GET", job.path
            )
        except Exception as e:  # tried again at a later poll
            log.info("%s %s: could not retrieve it (%s: %s)", job.kind, job.id, type(e).__name__, e)
            return False
        if status in (404, 410) or (status < 300 and _field(body, "status") in TERMINAL):
            return await self._done(job)
        return False

    async def _done(self, job: Job) -> bool:
        """No longer tracked, on any instance (its row marked ``settled_at``). False when the store refused it."""
        try:
            async with self.rt.sessions() as s, s.begin():
                await s.execute(
                    update(BatchCost)
                    .where(BatchCost.id == job.id, BatchCost.object == job.kind, BatchCost.settled_at.is_(None))
                    .values(settled_at=int(self.rt.clock.now()))
                )
        except Exception as e:  # it is retrieved again at a later poll, and marked then
            log.warning("%s %s: could not mark it done (%s: %s)", job.kind, job.id, type(e).__name__, e)
            return False
        self.polled.pop(job.id, None)
        self.cancelled.discard(job.id)
        return True


def _field(body: bytes | str, name: str) -> object:
    """A top-level field of a JSON object answer (None when the body is not one)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj.get(name) if isinstance(obj, dict) else None
