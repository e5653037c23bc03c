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
   The reservations of running batches are held again when the counters are rebuilt (engine.hold_batches).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson
from sqlalchemy import select, update

from keyplane import errors
from keyplane.billing import quote as quote_mod
from keyplane.billing.batch_input import LINE_KINDS, MAX_LINES, Estimate, Facts, _unbounded, estimate
from keyplane.billing.prices import MICROS, Price, PriceTable
from keyplane.limits import BudgetRef, Reservation
from keyplane.store.models import BatchCost

__all__ = ["LINE_KINDS", "MAX_LINES", "Batches", "Estimate", "Facts", "estimate", "parse_output", "record_id"]

log = logging.getLogger("keyplane.billing")

BATCH_KINDS: Final = frozenset(LINE_KINDS.values())
TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
# How long a batch's reservation is held: its 24 h completion window, plus the time to finish and be read.
RESERVE_SECONDS: Final = 26 * 3600
LEASE_SECONDS: Final = 600  # a metering that died mid-way is taken over after this
MAX_OUTPUT_LINE: Final = 16 * 1024 * 1024  # a longer output line is not JSON keyplane reads
POLL_SECONDS: Final = 300.0  # the background poll retrieves a batch not metered yet at most this often
POLL_BATCH: Final = 20  # batches retrieved per poll (every minute) and instance


class OutputUnreadable(Exception):
    """A batch's output file that can never be read (gone, or too large): the batch is billed at its reservation."""


# --- output lines ----------------------------------------------------------------------------------


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: dict[str, Any] | None = None
    input_tokens_details: dict[str, Any] | None = None

    def numbers(self) -> tuple[int, int, int]:
        p = self.prompt_tokens if self.prompt_tokens is not None else (self.input_tokens or 0)
        c = self.completion_tokens if self.completion_tokens is not None else (self.output_tokens or 0)
        d = self.prompt_tokens_details or self.input_tokens_details or {}
        cached = d.get("cached_tokens") if isinstance(d, dict) else 0
        return max(0, p), min(max(0, cached if isinstance(cached, int) else 0), max(0, p)), max(0, c)


def record_id(batch_id: str, custom_id: str, dup: int = 0) -> str:
    """The usage record id of one request of a batch: the same on every instance, every time."""
    h = hashlib.sha256(f"{batch_id}\0{custom_id}\0{dup}".encode()).hexdigest()[:20]
    return f"{batch_id[:43]}.{h}"


@dataclass(slots=True)
class Line:
    rid: str
    model: str | None
    status: int
    prompt: int
    cached: int
    completion: int
    upstream_request_id: str | None
    tools: dict[str, int] = field(default_factory=dict)  # hosted tool calls by usage kind (web_search_calls...)


def parse_output(content: bytes, batch_id: str) -> list[Line]:
    """The requests of a batch output file that report usage (failed lines bill nothing)."""
    from keyplane.proxy.usage import tool_counts

    out: list[Line] = []
    seen: dict[str, int] = {}
    for raw in content.splitlines():
        if not raw.strip() or len(raw) > MAX_OUTPUT_LINE:
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        resp = obj.get("response")
        body = resp.get("body") if isinstance(resp, dict) else None
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            continue
        try:
            u = msgspec.convert(usage, _Usage)
        except msgspec.ValidationError:
            continue
        custom = str(obj.get("custom_id") or obj.get("id") or "")
        dup = seen.get(custom, 0)
        seen[custom] = dup + 1
        p, c, o = u.numbers()
        status = resp.get("status_code") if isinstance(resp, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        urid = resp.get("request_id") if isinstance(resp, dict) else None
        items = body.get("output") if isinstance(body, dict) else None
        tools = (
            tool_counts((it.get("type"), it.get("container_id")) for it in items if isinstance(it, dict))
            if isinstance(items, list)
            else {}
        )
        out.append(
            Line(
                record_id(batch_id, custom, dup),
                model if isinstance(model, str) else None,
                status if isinstance(status, int) else 200,
                p,
                c,
                o,
                urid[:128] if isinstance(urid, str) else None,
                tools,
            )
        )
    return out


def line_cost(price: Price, factor: int, prompt: int, cached: int, completion: int) -> tuple[int, int]:
    """(cost, its input part) of one request of a batch, micro-dollars, rounded up."""
    total = -(-price.cost(prompt, cached, completion) * factor // MICROS)
    part_in = -(-price.cost(prompt, cached, 0) * factor // MICROS)
    return total, min(total, part_in)


# --- the service -----------------------------------------------------------------------------------


class Batches:
    """Batch estimates, reservations and metering of one process (built by billing's admission)."""

    def __init__(self, billing: Any) -> None:
        self.b = billing
        self.rt = billing.rt
        self.files: dict[tuple[str, str], Estimate] = {}  # (file id, project) -> estimate (a cache of the rows)
        self.settled: set[str] = set()  # batch ids metered (a cache: polls after that cost nothing)
        self._locks: dict[str, asyncio.Lock] = {}
        self.router: Any = None  # the proxy's router and upstream client (attach), for the background poll
        self.client: Any = None
        self._polled: dict[str, float] = {}  # batch id -> when the background poll last retrieved it
        self._cancelled: set[str] = set()  # batch ids this instance asked the provider to cancel (poll)

    def attach(self, router: Any, client: Any) -> None:
        self.router, self.client = router, client

    def busy(self, bid: str) -> bool:
        """The batch is being metered by this process, or was: its reservation is (being) settled here."""
        return bid in self.settled or bid in self._locks

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

    async def input_estimate(self, ctx: Any) -> tuple[str | None, Estimate | None]:
        """(input_file_id, its estimate) of a POST /v1/batches body."""
        try:
            obj = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            return None, None
        fid = obj.get("input_file_id") if isinstance(obj, dict) else None
        if not isinstance(fid, str) or not fid or len(fid) > 128:
            return None, None
        return fid, await self.file_estimate(fid, ctx.project_id or "")

    def check_access(self, ctx: Any, file_id: str | None, est: Estimate | None) -> None:
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
        res.extra["kept"] = True  # settle of the create leaves it held (billing.admission)

    # -- 3. metering -----------------------------------------------------------------------------

    async def batch_seen(self, req: Any, obj: dict[str, Any], router: Any, client: Any) -> None:
        """A batch object read through keyplane (retrieve, cancel): metered once it is terminal."""
        bid = obj.get("id")
        if obj.get("status") not in TERMINAL or not isinstance(bid, str) or bid in self.settled:
            return
        await self.meter(bid, obj, router, client)

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
            if bid in self.settled:
                continue
            obj = await self._get_json(router, client, upstream, project_id, f"/v1/batches/{bid}")
            if isinstance(obj, dict) and file_id in (obj.get("output_file_id"), obj.get("error_file_id")):
                if obj.get("status") in TERMINAL:
                    await self.meter(bid, obj, router, client)
                return

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
        self._polled = {k: v for k, v in self._polled.items() if k in live}
        self._cancelled &= live
        for bid, upstream, pid, kid in rows:
            if bid in self.settled or bid in self._cancelled:
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
            if bid in self.settled or now - self._polled.get(bid, 0.0) < POLL_SECONDS:
                continue
            limit -= 1
            self._polled[bid] = now
            obj = await self._get_json(self.router, self.client, upstream, pid, f"/v1/batches/{bid}")
            if isinstance(obj, dict) and obj.get("id") == bid and obj.get("status") in TERMINAL:
                try:
                    await self.meter(bid, obj, self.router, self.client)
                except Exception as e:  # this one is tried again at a later poll; the others are metered now
                    log.error("batch %s: metering failed (%s: %s); will retry", bid, type(e).__name__, e)
                    continue
                done += 1
        return done

    def _stopped(self, key_id: str | None, project_id: str) -> str | None:
        """Why a batch's key or project may not spend any more (revoked, suspended or deleted key, project not
        active), or None. Expired keys are not: a batch created before the expiry runs its course."""
        snap = self.rt.snapshot
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
        return None

    async def _stop(self, bid: str, upstream: str | None, project_id: str, key_id: str | None, why: str) -> None:
        """Cancel a running batch at its provider (``POST /v1/batches/{id}/cancel``), once per instance: what it
        produced until then is metered when it is terminal (cancelled), as any batch. Audited as
        ``batch.cancelled``."""
        status, body = await self._call(
            self.router, self.client, upstream, project_id, "POST", f"/v1/batches/{bid}/cancel"
        )
        if status >= 500 or status == 429:
            raise errors.upstream_error(f"The upstream answered {status} to the cancel.")
        self._cancelled.add(bid)  # answered: not asked again (a batch already finished answers an error)
        if status >= 400:
            log.info("batch %s: cancel answered %d (%s): %s", bid, status, why, body[:200].decode(errors="replace"))
            return
        log.warning("batch %s cancelled at the provider: %s", bid, why)
        from keyplane import control

        try:
            async with self.rt.sessions() as s, s.begin():
                await control.audit(
                    s,
                    control.SYSTEM_ACTOR,
                    "batch.cancelled",
                    {"id": bid, "api_key_id": key_id, "reason": why},
                    project_id=project_id or None,
                    resource_id=bid,
                    at=int(self.rt.clock.now()),
                )
        except Exception:
            log.exception("batch %s: the audit entry of its cancel could not be written", bid)

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
                content = await self._get_bytes(
                    router, client, row.upstream, row.project_id, f"/v1/files/{out_id}/content"
                )
            except OutputUnreadable as e:
                unread = str(e)
            else:
                lines = parse_output(content, row.id)
        prices: PriceTable = self.b.prices
        fallback = _dearest(prices, data.get("models") or [])
        endpoint = str(data.get("endpoint") or obj.get("endpoint") or "/v1/chat/completions")
        kind = LINE_KINDS.get(endpoint, "batch_completions")
        snap = self.rt.snapshot
        entry = snap.keys_by_id.get(row.api_key_id or "")
        from keyplane.usage.journal import Record

        now = self.rt.clock.now()
        records: list[Record] = []
        total = tokens_in = tokens_out = 0
        # each call at the price of the tool its requests enable (any other: the dearest of its kind)
        per_call = {**quote_mod.tool_prices(prices), **(data.get("tool_prices") or {})}
        for ln in lines:
            price = prices.lookup(ln.model) if ln.model else None
            model = ln.model
            if price is None or not price.tokens:
                model, price = fallback if fallback is not None else (ln.model, None)
            cost = part_in = 0
            if price is not None:
                cost, part_in = line_cost(price, prices.batch_factor(model or ""), ln.prompt, ln.cached, ln.completion)
            total += cost
            tokens_in += ln.prompt
            tokens_out += ln.completion
            rec = Record(
                ln.rid,
                now,
                snap.org_id or None,
                row.project_id,
                row.api_key_id,
                entry.owner_user_id if entry is not None else None,
                ln.model or model,
                row.upstream,
                kind,
                endpoint,
                ln.status,
                ln.prompt,
                ln.cached,
                ln.completion,
                cost,
                part_in,
                0.0,
                None,
                False,
                False,
                False,
                1,
                None,
                ln.upstream_request_id,
                0,
            )
            records.append(rec)
            # Hosted tool calls: at their full price per call (per container session), in the tool buckets.
            for tool_kind, micros in quote_mod.tool_cost(per_call, ln.tools).items():
                total += micros
                records.append(
                    msgspec.structs.replace(
                        rec,
                        id=record_id(row.id, f"{ln.rid}\0{tool_kind}"),
                        kind=tool_kind,
                        input_tokens=0,
                        cached_tokens=0,
                        output_tokens=0,
                        cost_micros=micros,
                        cost_input_micros=0,
                        units=ln.tools[tool_kind],
                    )
                )
        if unread is not None:
            # The output is gone (deleted before it was metered, expired) or too large to read: the batch ran and
            # the provider bills it, so it is billed at what was reserved for it (its bound), marked estimated.
            total = int(data.get("amount") or 0)
            name = fallback[0] if fallback is not None else next(iter(data.get("models") or []), None)
            records.append(
                Record(
                    record_id(row.id, "\0estimated"),
                    now,
                    snap.org_id or None,
                    row.project_id,
                    row.api_key_id,
                    entry.owner_user_id if entry is not None else None,
                    name,
                    row.upstream,
                    kind,
                    endpoint,
                    200,
                    cost_micros=total,
                    estimated=True,
                    attempts=1,
                    error=unread[:200],
                )
            )
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
                await guard.observe(ctx)
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

    def _dep(self, router: Any, upstream: str | None, project_id: str) -> Any:
        """The upstream holding the batch, with the credential the project's requests use there."""
        dep = router.by_name(upstream) if upstream else None
        bound = self.rt.features.providers_keys  # a project's own provider key (keyplane.providers)
        if dep is not None and bound is not None:
            pool = bound.apply(project_id, (dep,))
            dep = pool[0] if pool else None
        if dep is None:
            raise errors.upstream_error(f"The upstream `{upstream}` that holds the batch is not usable.")
        return dep

    async def _call(
        self, router: Any, client: Any, upstream: str | None, project_id: str, method: str, path: str
    ) -> tuple[int, bytes]:
        """(status, body) of a call to the upstream holding the batch; raises OutputUnreadable for a body larger
        than keyplane reads."""
        dep = self._dep(router, upstream, project_id)
        resp = await client.request(dep, method, path, [], b"")
        parts: list[bytes] = []
        size = 0
        limit = max(self.rt.settings.max_body_bytes * 4, 256 * 1024 * 1024)
        async for chunk in resp.chunks():
            size += len(chunk)
            if size > limit:
                resp.close()
                raise OutputUnreadable(f"the output file {path} is larger than keyplane reads ({limit} bytes)")
            parts.append(chunk)
        return resp.status, b"".join(parts)

    async def _get_bytes(self, router: Any, client: Any, upstream: str | None, project_id: str, path: str) -> bytes:
        """A GET's body; OutputUnreadable when it is gone (404, 410) or too large, an upstream error (tried again
        later) for any other failure."""
        status, body = await self._call(router, client, upstream, project_id, "GET", path)
        if status in (404, 410):
            raise OutputUnreadable(f"the upstream answered {status} reading {path} (deleted or expired)")
        if status >= 400:
            raise errors.upstream_error(f"The upstream answered {status} reading {path}.")
        return body

    async def _get_json(self, router: Any, client: Any, upstream: str | None, project_id: str, path: str) -> Any:
        try:
            return orjson.loads(await self._get_bytes(router, client, upstream, project_id, path))
        except Exception:  # unreachable, an error answer, not JSON: not metered now, a later read tries again
            return None


def _dearest(prices: PriceTable, models: list[str]) -> tuple[str, Price] | None:
    """The model of the input file with the highest prices: what an output line naming no priced model costs."""
    best: tuple[str, Price] | None = None
    for m in models:
        p = prices.lookup(m)
        if p is not None and p.tokens and (best is None or (p.input + p.output) > (best[1].input + best[1].output)):
            best = (m, p)
    return best
