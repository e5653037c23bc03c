"""The settle steps of metering: journal the request (order 20), then observe it (order 30).

Requests refused before the upstream (the refused hook) are observed, not journaled.

``record`` runs after billing filled ``ctx.cost_micros`` (order 10). It builds a Record and appends
it with one write(); nothing else on the request path (DESIGN.md hot-path rule 6). ``observe``
counts the request in the metrics, writes the access-log line and the trace span.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from keyplane.usage.access_log import AccessLog
from keyplane.usage.journal import Record, served_tier
from keyplane.usage.tools import tool_records

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime
    from keyplane.usage.holds import Holds

log = logging.getLogger("keyplane.usage")

_KINDS = {
    "/v1/chat/completions": "completions",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/realtime": "completions",  # OpenAI reports realtime sessions' tokens under completions
    "/v1/embeddings": "embeddings",
    "/v1/moderations": "moderations",
    "/v1/audio/speech": "audio_speeches",
    "/v1/audio/transcriptions": "audio_transcriptions",
    "/v1/audio/translations": "audio_transcriptions",
}
# Usage API endpoint -> record kinds it reports.
# Requests run by the Batch API are records of their own kinds (billing/batches.py): batch_<kind>.
USAGE_KINDS: dict[str, tuple[str, ...]] = {
    "completions": ("completions", "responses", "batch_completions", "batch_responses"),
    "embeddings": ("embeddings", "batch_embeddings"),
    "moderations": ("moderations",),
    "images": ("images",),
    "audio_speeches": ("audio_speeches",),
    "audio_transcriptions": ("audio_transcriptions",),
}


def kind_of(endpoint: str) -> str:
    k = _KINDS.get(endpoint)
    if k is not None:
        return k
    if endpoint.startswith("/v1/images/"):
        return "images"
    if endpoint.startswith("/v1/responses"):
        return "responses"
    return "other"


def input_part(ctx: RequestContext) -> int:
    """The input part of a request's cost (the Costs API's line items): what billing's settle step priced as
    input (billing/settle.py, from the one price table), else the cost split in the ratio of the token counts
    (a cost billing gave no split for: none is priced here a second time)."""
    given = ctx.cost_input_micros
    if given is not None:
        return int(given)
    cost = ctx.cost_micros
    if not cost:
        return 0
    total = ctx.prompt_tokens + ctx.completion_tokens
    return cost if total <= 0 else round(cost * ctx.prompt_tokens / total)


class Recorder:
    def __init__(
        self, rt: Runtime, writer: Any, applier: Any, metrics: Any, tracing: Any, holds: Holds | None = None
    ) -> None:
        self.rt = rt
        self.clock = rt.clock
        self.writer = writer
        self.applier = applier
        self.holds = holds
        self.metrics = metrics
        self.tracing = tracing
        self.access_log = AccessLog() if rt.settings.log_requests else None

    def build(self, ctx: RequestContext, now: float) -> Record:
        key = ctx.key
        by = ctx.modalities  # a realtime response's usage by modality
        audio = (by.audio_in, by.audio_out) if by is not None else ctx.audio_tokens
        a_in, a_out = audio if audio is not None else (0, 0)
        return Record(
            ctx.request_id,
            now,
            self.rt.snapshot.org_id or None,
            ctx.project_id,
            key.id,
            key.owner_user_id,
            ctx.model,
            ctx.upstream,
            kind_of(ctx.endpoint),
            ctx.endpoint,
            ctx.status,
            ctx.prompt_tokens,
            ctx.cached_tokens,
            ctx.completion_tokens,
            ctx.cost_micros,
            input_part(ctx),
            ctx.latency_ms,
            ctx.ttft_ms,
            ctx.stream,
            ctx.disconnected,
            ctx.usage_estimated,
            ctx.attempts,
            ctx.error,
            ctx.upstream_request_id,
            ctx.units,
            a_in,
            a_out,
            served_tier(ctx.service_tier),
            key.lineage,
        )

    async def record(self, ctx: RequestContext) -> None:
        """Settle step, order 20: append the request's usage record to the journal."""
        try:
            now = self.clock.now()
            rec = self.build(ctx, now)
            ctx.record = rec
            tools = tool_records(ctx, rec)  # hosted tool calls: records of their own kinds (usage/tools.py)
            try:
                self.writer.append(rec)
                for t in tools:
                    self.writer.append(t)
            except OSError as e:
                # The journal cannot take it (disk full...): keep it in memory for the applier, say so loudly. Its
                # hold stays until the applier has it in SQL: a crash meanwhile bills it at its reservation.
                if ctx.hold >= 0:
                    self.applier.fallback_holds[rec.id] = ctx.hold
                    ctx.hold = -1
                self.applier.fallback.extend([rec, *tools])  # ids make a repeated one harmless
                self.metrics.journal_errors.inc()
                log.error("usage journal: cannot append (%s); record %s kept in memory only", e, rec.id)
            else:
                self.metrics.appended += 1
                if ctx.hold >= 0 and self.holds is not None:
                    self.holds.release(ctx.hold)
                    ctx.hold = -1
            self.applier.notify()
        except Exception:
            log.exception("usage: could not record request %s", ctx.request_id)

    def hold(self, ctx: RequestContext, cost: int, now: float) -> int:
        """Admission, under a money control: the request's hold (usage/holds.py), billed at ``cost`` if the process
        ends before its record is journaled; the slot, -1 without a table. Raises HoldsUnavailable."""
        holds = self.holds
        if holds is None:
            return -1
        rec = self.build(ctx, now)  # the record as it would be now (nothing answered yet), billed at ``cost``
        rec.status, rec.cost_micros, rec.cost_input_micros, rec.estimated = 0, cost, 0, True
        return holds.hold(rec)

    def rehold(self, ctx: RequestContext) -> None:
        """The request's hold made again as it is now (a realtime response, quoted as a Responses call, is recorded
        under /v1/realtime): the new one written before the old one is freed, so that a kill in between leaves
        two holds of one request id, counted once, never none. The old one stays if no new one can be made."""
        holds, old, res = self.holds, ctx.hold, ctx.reservation
        if holds is None or old < 0 or res is None:
            return
        try:
            ctx.hold = self.hold(ctx, res.amount, self.clock.now())
        except OSError:
            return
        holds.release(old)

    def append_records(self, records: list[Record]) -> None:
        """Journal records made off the request path (a batch's requests, billing/batches.py)."""
        try:
            for rec in records:
                self.writer.append(rec)
            self.metrics.appended += len(records)
        except OSError as e:
            self.applier.fallback.extend(records)  # ids make a repeated one harmless
            self.metrics.journal_errors.inc()
            log.error("usage journal: cannot append (%s); %d batch records kept in memory only", e, len(records))
        self.applier.notify()

    def stream_started(self) -> None:
        self.metrics.active_streams.inc()

    def stream_ended(self) -> None:
        self.metrics.active_streams.dec()

    async def refused(self, ctx: RequestContext) -> None:
        """Refused-hook step: a key refused before any upstream call (403 scope, 404 model, 429 limits).

        Counted in the metrics (requests by status class, rejections by reason) and the access log;
        not journaled: nothing was used, and a client hammering a limit must not flood the store.
        """
        try:
            kind = kind_of(ctx.endpoint)
            self.metrics.observe(ctx, kind, timed=False)
            if self.access_log is not None:
                self.access_log.add(ctx, kind, self.clock.now())
        except Exception:
            log.exception("usage: could not observe refused request %s", ctx.request_id)

    def observe(self, ctx: RequestContext) -> None:
        """The pipeline's observe step: metrics, the access-log line, the trace span."""
        try:
            rec = ctx.record
            kind = rec.kind if rec is not None else kind_of(ctx.endpoint)
            self.metrics.observe(ctx, kind)
            now = rec.t if rec is not None else self.clock.now()
            if self.access_log is not None:
                self.access_log.add(ctx, kind, now)
            if self.tracing is not None:
                self.tracing.record(ctx, kind, now)
        except Exception:
            log.exception("usage: could not observe request %s", ctx.request_id)
