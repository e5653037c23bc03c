"""Batches: priced from their input file, reserved at creation, metered from their output, exactly once.

docs/limits-and-billing.md "Batches". The flow, for a batch whose input file was uploaded through keyplane:

1. ``POST /v1/files`` with ``purpose=batch``: once the upstream accepted the file (tenancy's after
   hook), its JSONL is read (at most ``max_body_bytes``, :data:`MAX_LINES` requests; billing/batch_input.py):
   every line quoted with the synchronous quote code for its endpoint (chat completions, completions,
   embeddings, responses) at the batch price (the ``[batch]`` factor of the price table: half; hosted
   tool calls, bounded by each line's ``max_tool_calls``, at their full price), and what every line asks
   for (models, hosted tools, URLs) noted. Both are kept against the file id (``batch_costs``, object
   ``file``) before the client sees the id. A line keyplane cannot price or bound (a model with no
   price, another endpoint, hosted tools without ``max_tool_calls``, no output limit for a model without
   ``max_output``...) makes the file unbounded, with the reason.
2. ``POST /v1/batches``: the key's scopes and the project's and key's model and hosted tool permissions
   are checked against every request of the file (:meth:`Batches.check_access`, a 403 naming the model,
   tool or scope and the line), then admission reserves the file's estimate against every budget (key,
   project, organization, credit) for the batch's completion window, instead of refusing it; an unknown
   or unbounded file is refused under money controls (``cost_not_bounded``). Once the upstream created
   the batch, the reservation is kept against the batch id (object ``batch``).
3. Retrieving the batch in a terminal state (or billing's background poll finding it so, every few
   minutes, when nobody reads it through keyplane) (``GET /v1/batches/{id}``), or reading its output file's
   content, meters it: one usage record per output line with usage (kind ``batch_completions``,
   ``batch_responses`` or ``batch_embeddings``; id derived from the batch id and the line's
   ``custom_id``), at the batch price, one more per hosted tool kind a line called (``web_search_calls``...,
   at the full price per call), then the reservation is settled with the total (the rest
   released). A lease on the row (``claimed_at``) and ``settled_at`` make it happen once, across
   polls and instances; the records' ids make a replay harmless in SQL. An output that can never be
   read (404/410, too large) bills the whole reservation as one estimated record; any other failure
   leaves the batch to a later poll, which goes on with the others. A batch kept with nothing reserved
   (an unbounded file where no money control applies) is metered the same way.
4. The background poll cancels at the provider the batches whose key was revoked, suspended or deleted,
   or whose project is no longer active (audited ``batch.cancelled``); they are metered once cancelled.
   The reservations of running batches are held again when the counters are rebuilt (hold_reservations).
   The same step cancels the fine-tuning jobs and eval runs of such keys and projects (billing/job_poll.py).

This module is steps 1 and 2 (and the entry points of 3); billing/batch_input.py reads an input file,
billing/batch_meter.py meters a batch from its output (billing/batch_output.py), billing/batch_poll.py is the
background poll (billing/job_poll.py its part for fine-tuning jobs and eval runs), billing/batch_upstream.py makes
their calls to the upstream holding a batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import select

from keyplane import errors
from keyplane.billing.batch_input import Estimate, Facts, _unbounded, estimate
from keyplane.billing.batch_meter import TERMINAL, BatchMeter
from keyplane.billing.batch_poll import POLL_BATCH, BatchPoller
from keyplane.billing.batch_upstream import BatchUpstream
from keyplane.billing.job_poll import JobPoller
from keyplane.limits import BudgetRef, Limiter, Reservation
from keyplane.store.models import BatchCost

if TYPE_CHECKING:
    from keyplane.billing.engine import Billing
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.billing")

# How long a batch's reservation is held: its 24 h completion window, plus the time to finish and be read.
RESERVE_SECONDS: Final = 26 * 3600


class Batches:
    """Batch estimates, reservations and metering of one process (built by billing's admission)."""

    def __init__(self, billing: Billing) -> None:
        self.b = billing
        self.rt = billing.rt
        self.files: dict[tuple[str, str], Estimate] = {}  # (file id, project) -> estimate (a cache of the rows)
        self.upstream = BatchUpstream(self.rt)
        self.metering = BatchMeter(billing, self.upstream)
        self.poller = BatchPoller(self.rt, self.metering, self.upstream)
        self.jobs = JobPoller(self.rt, self.upstream)  # fine-tuning jobs and eval runs of stopped keys

    def attach(self, router: Any, client: Any) -> None:
        """The proxy's router and upstream client, for the background poll."""
        self.poller.router, self.poller.client = router, client
        self.jobs.router, self.jobs.client = router, client

    def busy(self, bid: str) -> bool:
        """The batch is being metered by this process, or was: its reservation is (being) settled here."""
        return self.metering.busy(bid)

    async def poll(self, limit: int = POLL_BATCH, min_age: int = 30) -> int:
        """Background: cancel the batches of stopped keys and projects, meter the terminal ones (billing/batch_poll.py),
        then the same for fine-tuning jobs and eval runs, which are only cancelled (billing/job_poll.py). Returns how
        many batches were metered."""
        metered = await self.poller.poll(limit, min_age)
        await self.jobs.poll(limit, min_age)
        return metered

    # -- 1. the upload ---------------------------------------------------------------------------

    async def file_uploaded(self, req: Any, obj: dict[str, Any]) -> None:
        """A file created through keyplane: with purpose=batch, its estimate is kept before the client
        sees its id."""
        fid = obj.get("id")
        if obj.get("purpose") != "batch" or not isinstance(fid, str) or len(fid) > 128:
            return
        from keyplane.proxy import multipart

        ct = getattr(req, "content_type", None)
        try:
            if not ct:
                raise errors.bad_request("no Content-Type")
            content = multipart.file_part([(b"content-type", ct)], req.body)
        except errors.APIError as e:
            est = _unbounded(f"keyplane could not read the upload ({e.message})")
        else:
            args = (self.b.prices, content, self.b.default_max_tokens)
            est = await asyncio.to_thread(estimate, *args) if len(content) > 64 * 1024 else estimate(*args)
        await self._insert(
            BatchCost(
                id=fid,
                object="file",
                project_id=req.project_id or "",
                api_key_id=req.key.id,
                estimate_micros=est.cost,
                why=est.why,
                lines=est.lines,
                data=orjson.dumps(
                    {"models": est.models, "facts": est.facts.to_json(), "tool_prices": est.tool_prices}
                ).decode(),
                upstream=req.upstream,
                created_at=int(self.rt.clock.now()),
                cost_micros=0,
            )
        )
        self._remember(fid, req.project_id or "", est)

    def _remember(self, fid: str, project_id: str, est: Estimate) -> None:
        if len(self.files) >= 10_000:
            self.files.clear()
        self.files[(fid, project_id)] = est

    async def _insert(self, row: BatchCost) -> None:
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        ins = pg_insert if self.rt.engine.dialect.name == "postgresql" else sqlite_insert
        values = {c.name: getattr(row, c.name) for c in BatchCost.__table__.columns}
        async with self.rt.sessions() as s, s.begin():
            await s.execute(ins(BatchCost).values(**values).on_conflict_do_nothing(index_elements=["id"]))

    async def file_estimate(self, file_id: str, project_id: str) -> Estimate | None:
        est = self.files.get((file_id, project_id))
        if est is not None:
            return est
        async with self.rt.read() as s:
            row = (
                await s.execute(
                    select(BatchCost).where(
                        BatchCost.id == file_id, BatchCost.object == "file", BatchCost.project_id == project_id
                    )
                )
            ).scalar_one_or_none()
        if row is None:
            return None
        data = orjson.loads(row.data)
        est = Estimate(
            row.estimate_micros,
            row.why,
            row.lines,
            list(data.get("models") or []),
            Facts.from_json(data.get("facts")),
            dict(data.get("tool_prices") or {}),
        )
        self._remember(file_id, project_id, est)
        return est

    # -- 2. the batch is created -----------------------------------------------------------------

    async def input_estimate(self, ctx: RequestContext) -> tuple[str | None, Estimate | None]:
        """(input_file_id, its estimate) of a POST /v1/batches body."""
        try:
            obj = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            return None, None
        fid = obj.get("input_file_id") if isinstance(obj, dict) else None
        if not isinstance(fid, str) or not fid or len(fid) > 128:
            return None, None
        return fid, await self.file_estimate(fid, ctx.project_id or "")

    def check_access(self, ctx: RequestContext, file_id: str | None, est: Estimate | None) -> None:
        """POST /v1/batches, before the upstream: the key's scopes must allow every endpoint its requests call
        (the batch's ``endpoint`` and each line's ``url``), and the model and hosted tool permissions of its
        project and key every model and tool they name (keyplane.access: check_batch). Raises the 403."""
        from keyplane import scopes

        try:
            body = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            body = None
        endpoint = body.get("endpoint") if isinstance(body, dict) else None
        urls: dict[str, int | None] = {endpoint: None} if isinstance(endpoint, str) else {}
        if est is not None:
            for url, line in est.facts.urls.items():
                urls.setdefault(url, line)
        perms = ctx.key.permissions
        for url, at in sorted(urls.items(), key=lambda kv: kv[1] or 0):
            need = scopes.required_scope("POST", url)
            if need is not None and not perms.allows(need):
                where = f"line {at} of the input file `{(file_id or '')[:64]}`" if at else "the batch"
                raise errors.missing_scope(
                    need,
                    f"The requests of a batch are held to the scopes of the key that "
                    f"creates it: {where} calls {url[:100]}.",
                )
        access = self.rt.features.access
        if access is not None:
            access.check_batch(ctx.project_id, ctx.key.id, file_id, est.facts if est is not None else None)

    async def batch_created(self, req: Any, obj: dict[str, Any]) -> None:
        """The upstream created a batch admission reserved for: the reservation is kept against its id."""
        res: Reservation | None = req.reservation
        bid = obj.get("id")
        if res is None or "batch" not in res.extra or not isinstance(bid, str) or len(bid) > 128:
            return
        est: Estimate = res.extra["batch"]  # type: ignore[assignment]
        # An unbounded file (kept with nothing reserved, where no money control applies) priced no model: the
        # models its lines name price the output lines that name none.
        models = est.models or sorted(est.facts.models)[:100]
        data = {
            "rid": res.rid,
            "amount": res.amount,
            "budgets": [[b.key, b.limit, b.ttl] for b in res.budgets],
            "models": models,
            "endpoint": obj.get("endpoint"),
            "tool_prices": est.tool_prices,
        }
        try:
            await self._insert(
                BatchCost(
                    id=bid,
                    object="batch",
                    project_id=req.project_id or "",
                    api_key_id=req.key.id,
                    estimate_micros=res.amount,
                    why=None,
                    lines=est.lines,
                    data=orjson.dumps(data).decode(),
                    upstream=req.upstream,
                    input_file_id=res.extra.get("input_file_id"),
                    created_at=int(self.rt.clock.now()),
                    cost_micros=0,
                )
            )
        except Exception:
            log.exception("batch %s: could not keep its reservation; it is released and the batch is not metered", bid)
            return
        res.extra["kept"] = True  # settle of the create leaves it held (billing.settle)

    # -- 3. metering -----------------------------------------------------------------------------

    async def batch_seen(self, req: Any, obj: dict[str, Any], router: Any, client: Any) -> None:
        """A batch object read through keyplane (retrieve, cancel): metered once it is terminal."""
        bid = obj.get("id")
        if obj.get("status") not in TERMINAL or not isinstance(bid, str) or bid in self.metering.settled:
            return
        await self.metering.meter(bid, obj, router, client)

    async def output_read(self, file_id: str, project_id: str, router: Any, client: Any) -> None:
        """A file's content read through keyplane: if it is the output of a batch not metered yet, the batch is
        retrieved from the upstream and metered when it is terminal."""
        async with self.rt.read() as s:
            rows = (
                await s.execute(
                    select(BatchCost.id, BatchCost.upstream)
                    .where(
                        BatchCost.object == "batch", BatchCost.project_id == project_id, BatchCost.settled_at.is_(None)
                    )
                    .order_by(BatchCost.created_at.desc())
                    .limit(20)
                )
            ).all()
        for bid, upstream in rows:
            if bid in self.metering.settled:
                continue
            obj = await self.upstream.get_json(router, client, upstream, project_id, f"/v1/batches/{bid}")
            if isinstance(obj, dict) and file_id in (obj.get("output_file_id"), obj.get("error_file_id")):
                if obj.get("status") in TERMINAL:
                    await self.metering.meter(bid, obj, router, client)
                return


async def hold_reservations(rt: Runtime, limiter: Limiter) -> int:
    """Hold again the reservation of every batch not metered yet (its row in ``batch_costs``: request id,
    amount, budgets) for what is left of its window (billing/batches.py RESERVE_SECONDS): the in-process
    limiter starts empty after a restart, Redis after a loss of its data, and the batches go on spending.
    Idempotent: a reservation still held is left as it is (a second seed, another instance). Returns how
    many were held again."""
    now = rt.clock.now()
    async with rt.read() as s:
        rows = (
            await s.execute(
                select(BatchCost.id, BatchCost.data, BatchCost.created_at).where(
                    BatchCost.object == "batch",
                    BatchCost.settled_at.is_(None),
                    BatchCost.created_at > int(now) - RESERVE_SECONDS,
                )
            )
        ).all()
    batches = rt.features.batches
    held: dict[str, Reservation] = {}
    for bid, raw, created in rows:
        if batches is not None and batches.busy(bid):
            continue  # being metered (or metered) by this process: its settle releases the reservation
        try:
            data = orjson.loads(raw)
            res = Reservation(
                str(data.get("rid") or bid),
                int(data.get("amount") or 0),
                0,
                tuple(BudgetRef(str(k), None, int(ttl)) for k, _, ttl in data.get("budgets") or []),
                (),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            log.warning("batch %s: its reservation cannot be read from its row; not held again", bid)
            continue
        ttl_us = int((created + RESERVE_SECONDS - now) * 1_000_000)
        if await limiter.hold(res, ttl_us):
            held[bid] = res
    if held:
        # A batch metered elsewhere while these were read (its row settled after the read): release it again.
        ids = list(held)
        gone: list[str] = []
        async with rt.read() as s:
            for i in range(0, len(ids), 500):
                gone.extend(
                    (
                        await s.execute(
                            select(BatchCost.id).where(
                                BatchCost.id.in_(ids[i : i + 500]), BatchCost.settled_at.is_not(None)
                            )
                        )
                    ).scalars()
                )
        for bid in gone:
            await limiter.settle(held.pop(bid), 0, 0)
        log.info("held the reservations of %d running batches again", len(held))
    return len(held)
