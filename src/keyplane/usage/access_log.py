"""One access-log line per request on the logger ``keyplane.access``.

Only identifiers and numbers: the request id, key *id* (never the key), project, model, status,
tokens, cost, timings. Never the key value, never the prompt or the answer. With log_format=json
the fields are top-level keys of the JSON line (keyplane.logs.JsonFormatter reads ``fields``).

A Python log line costs some 30-40 µs (LogRecord, formatting, a write and a flush per line), more
than the rest of metering together, so the request path only keeps the numbers (a tuple) and a
background task writes the lines every FLUSH_SECONDS (docs/benchmarks-metering.md). The line says
when the request completed (``completed_at``); lines still pending when the process is killed are
lost, the usage records are not (they are in the journal).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from keyplane.logs import BatchFormatter, JsonFormatter, batch_handlers, safe

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.access")
_FORMAT = "%s %s %s %s model=%s tokens=%d/%d cost=$%.6f %.0fms%s"
_FIELDS = (
    "request_id",
    "method",
    "endpoint",
    "kind",
    "status",
    "project_id",
    "api_key_id",
    "user_id",
    "model",
    "upstream",
    "stream",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "disconnected",
    "error",
    "completed_at",
)
MAX_PENDING = 2048


def fields(row: tuple[Any, ...]) -> dict[str, Any]:
    f = dict(zip(_FIELDS, row, strict=True))
    f["cost_usd"] = f["cost_usd"] / 1e6
    f["latency_ms"] = round(f["latency_ms"], 2)
    if f["ttft_ms"] is not None:
        f["ttft_ms"] = round(f["ttft_ms"], 2)
    f["completed_at"] = round(f["completed_at"], 3)
    return f


class AccessLog:
    FLUSH_SECONDS = 0.25

    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []

    def add(self, ctx: RequestContext, kind: str, now: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        self.pending.append(
            (
                ctx.request_id,
                ctx.method,
                ctx.endpoint,
                kind,
                ctx.status,
                ctx.project_id,
                ctx.key.id,
                ctx.key.owner_user_id,
                ctx.model,
                ctx.upstream,
                ctx.stream,
                ctx.prompt_tokens,
                ctx.cached_tokens,
                ctx.completion_tokens,
                ctx.cost_micros,
                ctx.latency_ms,
                ctx.ttft_ms,
                ctx.attempts,
                ctx.disconnected,
                ctx.error,
                now,
            )
        )
        if len(self.pending) >= MAX_PENDING:
            self.flush()  # bounded memory, even if the background task is starved

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        handlers = batch_handlers(log, logging.INFO)
        fast = [(h, h.formatter) for h in handlers or () if isinstance(h.formatter, BatchFormatter) and not h.filters]
        if handlers is not None and len(fast) == len(handlers):
            # keyplane's handlers and formatters: the lines made without a LogRecord each, one write per handler
            messages = [_FORMAT % _args(row) for row in pending]
            wanted = any(isinstance(fmt, JsonFormatter) for _, fmt in fast)
            rows = [fields(row) for row in pending] if wanted else None
            for h, fmt in fast:
                if h.level <= logging.INFO:
                    h.write_lines(fmt.batch(log.name, logging.INFO, messages, rows))
            return
        records = [
            # makeRecord rather than log.info: no stack walk for the caller (findCaller).
            log.makeRecord(log.name, logging.INFO, __file__, 0, _FORMAT, _args(row), None, "access", {"fields": f})
            for row in pending
            for f in (fields(row),)
        ]
        if handlers is None:  # a handler keyplane did not set up: the logging module's own way, line by line
            for record in records:
                log.handle(record)
            return
        for h in handlers:  # keyplane's handler with a formatter of its own: the batch in one write
            h.emit_many(records)


def _args(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The text line's values (``_FORMAT``) of a pending row (the order of ``_FIELDS``)."""
    error = row[19]
    return (
        row[0],
        row[1],
        # The path and the model name come from the client: escaped, so that a CR/LF cannot forge a line.
        safe(row[2]),
        row[4],
        safe(row[8]) if row[8] is not None else "-",
        row[11],
        row[13],
        row[14] / 1e6,
        round(row[15], 2),
        f" error={error}" if error else "",
    )
