"""The OpenAI Usage and Costs API under /v1/organization, and the per-request listing (an extension).

Shapes and parameters are those of the official SDK (openai.resources.admin.organization.usage and
openai.types.admin.organization.usage_*): ``{"object": "page", "data": [buckets], "has_more",
"next_page"}``, each bucket ``{"object": "bucket", "start_time", "end_time", "results": [...]}``.

Buckets are aligned on UTC multiples of the width (minutes, hours, days); only usage between
start_time (inclusive) and end_time (exclusive) is counted, to the second (rollups.py). Every bucket
of the page is listed, empty ones with ``results: []``. ``next_page`` is an opaque cursor naming the
next bucket (and the end of the range, so that pages agree when end_time defaults to now).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, or_, select
from starlette.requests import Request

from keyplane import errors
from keyplane.admin.common import JSONResponse, authenticate_admin, list_response, query_list, runtime
from keyplane.admin.params import MAX_TIMESTAMP, parse_int, query_bool, query_limit, query_timestamp
from keyplane.usage import rollups
from keyplane.usage.models import UsageRequest
from keyplane.usage.recorder import USAGE_KINDS
from keyplane.usage.tools import TOOL_KINDS

P = "/v1/organization"
# bucket_width -> (seconds, default limit, max limit)
WIDTHS = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}
COSTS_LIMIT = (7, 180)
_STD = ("project_id", "user_id", "api_key_id", "model")
GROUP_BY: dict[str, tuple[str, ...]] = {
    "completions": (*_STD, "batch", "service_tier", "api_source"),
    "embeddings": _STD,
    "moderations": _STD,
    "images": (*_STD, "size", "source"),
    "audio_speeches": _STD,
    "audio_transcriptions": _STD,
    "vector_stores": ("project_id",),
    "code_interpreter_sessions": ("project_id",),
    "file_search_calls": ("project_id", "user_id", "api_key_id", "vector_store_id"),
    "web_search_calls": (*_STD, "context_level", "api_source"),
}
COSTS_GROUP_BY = ("project_id", "user_id", "line_item", "api_key_id", "api_source")
_SQL_DIMS = {"project_id": "project_id", "user_id": "user_id", "api_key_id": "api_key_id", "model": "model"}


# --- parameters ----------------------------------------------------------------------------------


def _group_by(request: Request, allowed: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for g in query_list(request, "group_by"):
        if g not in allowed:
            raise errors.bad_request(
                f"Invalid 'group_by' value '{g[:40]}': supported values are {', '.join(allowed)}.",
                param="group_by",
                code="invalid_value",
            )
        if g not in out:
            out.append(g)
    return out


def _encode_page(end: int, bucket: int) -> str:
    return "page_" + base64.urlsafe_b64encode(struct.pack(">qq", end, bucket)).decode()


def _decode_page(value: str) -> tuple[int, int]:
    try:
        if not value.startswith("page_"):
            raise ValueError
        end, bucket = struct.unpack(">qq", base64.urlsafe_b64decode(value[5:]))
        if not (0 <= end <= MAX_TIMESTAMP and 0 <= bucket <= MAX_TIMESTAMP):
            raise ValueError  # a forged cursor: its arithmetic would leave the int64 range
        return end, bucket
    except (ValueError, struct.error, binascii.Error):
        raise errors.bad_request(
            "Invalid 'page': use the next_page value of the previous response.", param="page", code="invalid_value"
        ) from None


class Range:
    """start/end/bucket_width/limit/page of a bucketed query, validated."""

    def __init__(self, request: Request, *, costs: bool = False) -> None:
        rt = runtime(request)
        self.start = query_timestamp(request, "start_time", required=True) or 0
        end = query_timestamp(request, "end_time")
        bw = request.query_params.get("bucket_width") or "1d"
        if bw not in WIDTHS or (costs and bw != "1d"):
            ok = "1d" if costs else "1m, 1h, 1d"
            raise errors.bad_request(
                f"Invalid 'bucket_width' '{bw[:20]}': supported values are {ok}.",
                param="bucket_width",
                code="invalid_value",
            )
        self.width, default, maximum = WIDTHS[bw]
        if costs:
            default, maximum = COSTS_LIMIT
        self.limit = query_limit(request, default, maximum)
        page = request.query_params.get("page")
        cursor: int | None = None
        if page:
            page_end, cursor = _decode_page(page)
            if end is None:
                end = page_end
        if end is None:
            end = int(rt.clock.now()) + 1  # "now", the current second included
        if end <= self.start:
            raise errors.bad_request(
                "Invalid 'end_time': it must be after 'start_time'.", param="end_time", code="invalid_value"
            )
        self.end = end
        first = self.start - self.start % self.width
        if cursor is None:
            cursor = first
        elif cursor % self.width or not first <= cursor < end:
            raise errors.bad_request(
                "Invalid 'page': it does not belong to this time range.", param="page", code="invalid_value"
            )
        total = -(-(end - cursor) // self.width)
        self.count = min(self.limit, total)
        self.buckets = [cursor + i * self.width for i in range(self.count)]
        self.has_more = total > self.limit
        self.next_page = _encode_page(end, cursor + self.count * self.width) if self.has_more else None
        self.q_lo = max(self.start, cursor)
        self.q_hi = min(end, cursor + self.count * self.width)
        self.minute_cutoff = rollups.cutoffs(rt.settings, rt.clock.now())["usage_minute"]


def _filters(request: Request, kinds: tuple[str, ...]) -> rollups.Filters:
    return rollups.Filters(
        project_ids=tuple(query_list(request, "project_ids")),
        api_key_ids=tuple(query_list(request, "api_key_ids")),
        user_ids=tuple(query_list(request, "user_ids")),
        models=tuple(query_list(request, "models")),
        kinds=kinds,
    )


def _page(rng: Range, results: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    data = [
        {"object": "bucket", "start_time": b, "end_time": b + rng.width, "results": results.get(b, [])}
        for b in rng.buckets
    ]
    return {"object": "page", "data": data, "has_more": rng.has_more, "next_page": rng.next_page}


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is not None, str(v) if v is not None else "") for v in key)


async def _aggregate(request: Request, rng: Range, dims: list[str], filters: rollups.Filters) -> dict[Any, Any]:
    async with runtime(request).read() as s:
        conn = await s.connection()
        return await rollups.aggregate(
            conn, rng.q_lo, rng.q_hi, width=rng.width, group_by=dims, filters=filters, minute_cutoff=rng.minute_cutoff
        )


# --- usage ---------------------------------------------------------------------------------------


def _group_fields(kind: str, group_by: list[str], vals: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in GROUP_BY[kind]:
        if g not in group_by:
            out[g] = None
        elif g in _SQL_DIMS or g == "batch":
            out[g] = vals.get(g)
        else:  # keyplane has no service tiers or Agents API attribution per record
            out[g] = {"service_tier": "default", "api_source": "unlabeled"}.get(g)
    return out


def _batch_kinds(record_kinds: tuple[str, ...], batch: bool | None) -> tuple[str, ...]:
    """The record kinds of a Usage API kind, all or only the Batch API's (``batch=true``) or only the others."""
    if batch is None:
        return record_kinds
    return tuple(k for k in record_kinds if k.startswith("batch_") == batch)


# Kinds counted in units (usage.models ``units``) rather than tokens: the result field that says how many.
UNIT_FIELDS = {
    "images": "images",
    "audio_speeches": "characters",
    "audio_transcriptions": "seconds",
    "web_search_calls": "num_requests",
    "file_search_calls": "num_requests",
    "code_interpreter_sessions": "num_sessions",
}
# The result object of a kind, where it is not organization.usage.<kind>.result.
_OBJECTS = {"web_search_calls": "web_searches", "file_search_calls": "file_searches"}
METERED = ("completions", "embeddings", "moderations", *UNIT_FIELDS)


def _usage_result(kind: str, sums: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    n_in, cached = int(sums["input_tokens"]), int(sums["cached_tokens"])
    r: dict[str, Any] = {"object": f"organization.usage.{_OBJECTS.get(kind, kind)}.result"}
    if kind in UNIT_FIELDS:
        r[UNIT_FIELDS[kind]] = int(sums["units"])
    else:
        r["input_tokens"] = n_in
    if kind == "completions":
        r |= {
            "output_tokens": int(sums["output_tokens"]),
            "input_cached_tokens": cached,
            "input_uncached_tokens": n_in - cached,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
        }
    if kind not in ("file_search_calls", "code_interpreter_sessions"):
        r["num_model_requests"] = int(sums["model_requests"])
    return r | fields


def _usage_handler(kind: str) -> Callable[[Request], Any]:
    allowed = GROUP_BY[kind]
    record_kinds = USAGE_KINDS.get(kind) or ((kind,) if kind in TOOL_KINDS else None)

    async def handler(request: Request) -> JSONResponse:
        authenticate_admin(request)
        rng = Range(request)
        group_by = _group_by(request, allowed)
        if (source := request.query_params.get("source")) is not None:  # ingested provider usage: docs/providers.md
            from keyplane.providers.usage_api import provider_usage

            return await provider_usage(request, kind, rng, group_by, source)
        if kind == "vector_stores":  # a gauge of the sizes the upstream reported (usage/storage.py)
            return JSONResponse(_page(rng, await _vector_stores(request, rng, group_by)))
        batch = query_bool(request, "batch") if request.query_params.get("batch") else None
        results: dict[int, list[dict[str, Any]]] = {}
        for unsupported in ("sizes", "sources"):  # not kept per request: refused rather than ignored
            if query_list(request, unsupported):
                raise errors.bad_request(
                    f"keyplane does not keep image {unsupported} per request: '{unsupported}' is not supported.",
                    param=unsupported,
                    code="invalid_value",
                )
        kinds = _batch_kinds(record_kinds, batch) if record_kinds else ()
        if kind in METERED and kinds:
            dims = [g for g in group_by if g in _SQL_DIMS]
            by_batch = "batch" in group_by
            acc = await _aggregate(request, rng, [*dims, "kind"] if by_batch else dims, _filters(request, kinds))
            if by_batch:  # the Batch API's requests are the batch_* record kinds: grouped by that flag
                merged: dict[Any, Any] = {}
                for key, sums in acc.items():
                    k = (*key[:-1], str(key[-1] or "").startswith("batch_"))
                    into = merged.setdefault(k, rollups.new_sums())
                    for f, v in sums.items():
                        into[f] += v
                acc = merged
                dims = [*dims, "batch"]
            for key in sorted(acc, key=_order):
                sums = acc[key]
                if not (sums["model_requests"] or sums["input_tokens"] or sums["output_tokens"] or sums["units"]):
                    continue
                vals = dict(zip(dims, key[1:], strict=True))
                results.setdefault(key[0], []).append(_usage_result(kind, sums, _group_fields(kind, group_by, vals)))
        return JSONResponse(_page(rng, results))

    handler.__name__ = f"usage_{kind}"
    return handler


async def _vector_stores(request: Request, rng: Range, group_by: list[str]) -> dict[int, list[dict[str, Any]]]:
    from keyplane.usage.storage import bucket_sizes

    by_project = "project_id" in group_by
    async with runtime(request).read() as s:
        conn = await s.connection()
        sizes = await bucket_sizes(conn, rng.buckets, rng.width, tuple(query_list(request, "project_ids")), by_project)
    results: dict[int, list[dict[str, Any]]] = {}
    for bucket, per in sizes.items():
        results[bucket] = [
            {"object": "organization.usage.vector_stores.result", "usage_bytes": n, "project_id": pid}
            for pid, n in sorted(per.items(), key=lambda kv: str(kv[0]))
        ]
    return results


# --- costs ---------------------------------------------------------------------------------------

# Line items of the kinds counted in units: (name, quantity unit); tool calls are not per model.
_UNIT_LINES = {
    "images": ("{model}, images", "images"),
    "audio_speeches": ("{model}, characters", "characters"),
    "audio_transcriptions": ("{model}, audio", "duration_seconds"),
    "web_search_calls": ("web search tool calls", None),
    "file_search_calls": ("file search tool calls", None),
    "code_interpreter_sessions": ("code interpreter sessions", None),
}


def _line_items(
    model: str, kind: str, total: int, part_in: int, sums: dict[str, Any]
) -> list[tuple[str | None, int, Any, str | None]]:
    unit_line = _UNIT_LINES.get(kind)
    if unit_line is not None:
        return [(unit_line[0].format(model=model), total, int(sums["units"]), unit_line[1])]
    tag = " (batch)" if kind.startswith("batch_") else ""  # the platform's line items of the Batch API
    return [
        (f"{model}, input{tag}", part_in, sums["input_tokens"], "tokens"),
        (f"{model}, output{tag}", total - part_in, sums["output_tokens"], "tokens"),
    ]


async def costs(request: Request) -> JSONResponse:
    authenticate_admin(request)
    rng = Range(request, costs=True)
    group_by = _group_by(request, COSTS_GROUP_BY)
    if (source := request.query_params.get("source")) is not None:  # ingested provider costs: docs/providers.md
        from keyplane.providers.usage_api import provider_costs

        return await provider_costs(request, rng, group_by, source)
    # Not query_list: a line item has a comma in it ("gpt-4o, input").
    line_items = set(request.query_params.getlist("line_items[]") + request.query_params.getlist("line_items"))
    by_line = "line_item" in group_by or bool(line_items)
    dims = [g for g in group_by if g in _SQL_DIMS]
    sql_dims = [*dims, "model", "kind"] if by_line else dims
    acc = await _aggregate(request, rng, sql_dims, _filters(request, ()))
    out: dict[tuple[Any, ...], list[Any]] = {}  # (bucket, *dims, line_item) -> [micros, quantity, unit]
    for key, sums in acc.items():
        vals = dict(zip(sql_dims, key[1:], strict=True))
        total, part_in = int(sums["cost_micros"]), int(sums["cost_input_micros"])
        if not total and not sums["model_requests"]:
            continue
        lines: list[tuple[str | None, int, Any, str | None]]
        if by_line:
            lines = _line_items(vals.get("model") or "unknown", vals.get("kind") or "", total, part_in, sums)
        else:
            lines = [(None, total, 0, None)]
        for item, micros, qty, unit in lines:
            if line_items and item not in line_items:
                continue
            k = (key[0], *(vals[d] for d in dims), item if "line_item" in group_by else None)
            slot = out.setdefault(k, [0, 0, unit])
            slot[0] += micros
            slot[1] += qty
    results: dict[int, list[dict[str, Any]]] = {}
    for k in sorted(out, key=_order):
        micros, qty, unit = out[k]
        vals = dict(zip(dims, k[1:-1], strict=True))
        grouped_line = "line_item" in group_by
        results.setdefault(k[0], []).append(
            {
                "object": "organization.costs.result",
                "amount": {"value": micros / 1e6, "currency": "usd"},
                "line_item": k[-1] if grouped_line else None,
                "project_id": vals.get("project_id"),
                "user_id": vals.get("user_id"),
                "api_key_id": vals.get("api_key_id"),
                "api_source": "unlabeled" if "api_source" in group_by else None,
                "quantity": qty if grouped_line else None,
                "quantity_unit": unit if grouped_line else None,
            }
        )
    return JSONResponse(_page(rng, results))


# --- per-request records (extension) -------------------------------------------------------------


def request_object(r: Any) -> dict[str, Any]:
    return {
        "object": "organization.usage.request",
        "id": r.id,
        "created_at": r.created_at,
        "project_id": r.project_id,
        "api_key_id": r.api_key_id,
        "user_id": r.user_id,
        "model": r.model,
        "upstream": r.upstream,
        "endpoint": r.endpoint,
        "kind": r.kind,
        "status": r.status,
        "input_tokens": r.input_tokens,
        "input_cached_tokens": r.cached_tokens,
        "output_tokens": r.output_tokens,
        "cost": {"value": r.cost_micros / 1e6, "currency": "usd"},
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "stream": r.stream,
        "disconnected": r.disconnected,
        "usage_estimated": r.estimated,
        "attempts": r.attempts,
        "error": r.error,
        "upstream_request_id": r.upstream_request_id,
    }


def _status_clause(values: list[str]) -> Any:
    clauses = []
    for v in values:
        v = v.strip().lower()
        if len(v) == 3 and v[0] in "12345" and v[1:] == "xx":
            lo = int(v[0]) * 100
            clauses.append(and_(UsageRequest.status >= lo, UsageRequest.status < lo + 100))
        elif v.isdigit():
            clauses.append(UsageRequest.status == parse_int(v, "status", 100, 599))
        else:
            raise errors.bad_request(
                f"Invalid 'status' value '{v[:20]}': use a status code (429) or a class (5xx).",
                param="status",
                code="invalid_value",
            )
    return or_(*clauses)


async def list_requests(request: Request) -> JSONResponse:
    """Extension: individual request records, newest first, for forensics."""
    authenticate_admin(request)
    r = UsageRequest
    start, end = query_timestamp(request, "start_time"), query_timestamp(request, "end_time")
    if start is not None and end is not None and end <= start:
        raise errors.bad_request(
            "Invalid 'end_time': it must be after 'start_time'.", param="end_time", code="invalid_value"
        )
    limit = query_limit(request, 100, 1000)
    stmt = select(r)
    conds: list[Any] = []
    if start is not None:
        conds.append(r.created_at >= start)
    if end is not None:
        conds.append(r.created_at < end)
    for param, col in (
        ("project_ids", r.project_id),
        ("api_key_ids", r.api_key_id),
        ("user_ids", r.user_id),
        ("models", r.model),
        ("kinds", r.kind),
        ("upstreams", r.upstream),
    ):
        values = query_list(request, param)
        if values:
            conds.append(col.in_(values))
    statuses = query_list(request, "status")
    if statuses:
        conds.append(_status_clause(statuses))
    after = request.query_params.get("after")
    async with runtime(request).read() as s:
        if after:
            row = (await s.execute(select(r.created_at, r.seq).where(r.id == after))).first()
            if row is None:
                raise errors.bad_request(
                    f"No request record with id '{after[:64]}' to page from.", param="after", code="invalid_value"
                )
            conds.append(or_(r.created_at < row.created_at, and_(r.created_at == row.created_at, r.seq < row.seq)))
        stmt = stmt.where(*conds).order_by(r.created_at.desc(), r.seq.desc()).limit(limit + 1)
        rows = list((await s.execute(stmt)).scalars())
    return JSONResponse(list_response([request_object(x) for x in rows[:limit]], len(rows) > limit))


def endpoints() -> list[Any]:
    from keyplane.admin import Endpoint

    out = [
        Endpoint(f"{P}/usage/{kind}", "GET", _usage_handler(kind), f"Usage: {kind.replace('_', ' ')}")
        for kind in GROUP_BY
    ]
    out.append(Endpoint(f"{P}/costs", "GET", costs, "Costs"))
    out.append(
        Endpoint(
            f"{P}/usage/requests",
            "GET",
            list_requests,
            "Individual request records (usage, cost, status, timings), newest first, for forensics",
            True,
        )
    )
    return out
