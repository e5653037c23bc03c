"""The Usage and Costs API's queries, shared by the admin API (usage/api.py) and the dashboard.

Each takes what its admin route parsed from the query string (a :class:`Range`, the group-by dimensions,
:class:`keyplane.usage.rollups.Filters`) and returns the page the route answers with; refusals are the
domain's (keyplane.domain), answered by the admin API as its 400s.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable
from typing import Any

from keyplane.domain import Invalid
from keyplane.runtime import Runtime
from keyplane.usage import rollups
from keyplane.usage.recorder import USAGE_KINDS
from keyplane.usage.tools import TOOL_KINDS

MAX_TIMESTAMP = 253_402_300_799  # keyplane.admin.params.MAX_TIMESTAMP (9999-12-31T23:59:59Z)
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
# group_by values that are rollup dimensions (service_tier: only the completions bucket accepts it).
_SQL_DIMS = ("project_id", "user_id", "api_key_id", "model", "service_tier")


# --- parameters ----------------------------------------------------------------------------------


def check_group_by(values: Iterable[str], allowed: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for g in values:
        if g not in allowed:
            raise Invalid(
                f"Invalid 'group_by' value '{g[:40]}': supported values are {', '.join(allowed)}.",
                param="group_by",
                code="invalid_value",
            )
        if g not in out:
            out.append(g)
    return out


def check_width(bucket_width: str, costs: bool = False) -> tuple[int, int]:
    """(default, maximum) page size of a bucket width (costs: 1d only)."""
    if bucket_width not in WIDTHS or (costs and bucket_width != "1d"):
        ok = "1d" if costs else "1m, 1h, 1d"
        raise Invalid(
            f"Invalid 'bucket_width' '{bucket_width[:20]}': supported values are {ok}.",
            param="bucket_width",
            code="invalid_value",
        )
    _, default, maximum = WIDTHS[bucket_width]
    return COSTS_LIMIT if costs else (default, maximum)


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
        raise Invalid(
            "Invalid 'page': use the next_page value of the previous response.", param="page", code="invalid_value"
        ) from None


class Range:
    """start/end/bucket_width/limit/page of a bucketed query, validated (``limit``: checked by the caller
    against :func:`check_width`'s maximum; None: the width's default)."""

    def __init__(
        self,
        rt: Runtime,
        start: int,
        end: int | None,
        bucket_width: str,
        limit: int | None = None,
        page: str | None = None,
        *,
        costs: bool = False,
    ) -> None:
        self.start = start
        default, _ = check_width(bucket_width, costs)
        self.width = WIDTHS[bucket_width][0]
        self.limit = default if limit is None else limit
        cursor: int | None = None
        if page:
            page_end, cursor = _decode_page(page)
            if end is None:
                end = page_end
        if end is None:
            end = int(rt.clock.now()) + 1  # "now", the current second included
        if end <= self.start:
            raise Invalid("Invalid 'end_time': it must be after 'start_time'.", param="end_time", code="invalid_value")
        self.end = end
        first = self.start - self.start % self.width
        if cursor is None:
            cursor = first
        elif cursor % self.width or not first <= cursor < end:
            raise Invalid("Invalid 'page': it does not belong to this time range.", param="page", code="invalid_value")
        total = -(-(end - cursor) // self.width)
        self.count = min(self.limit, total)
        self.buckets = [cursor + i * self.width for i in range(self.count)]
        self.has_more = total > self.limit
        self.next_page = _encode_page(end, cursor + self.count * self.width) if self.has_more else None
        self.q_lo = max(self.start, cursor)
        self.q_hi = min(end, cursor + self.count * self.width)
        self.minute_cutoff = rollups.cutoffs(rt.settings, rt.clock.now())["usage_minute"]


def _page(rng: Range, results: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    data = [
        {"object": "bucket", "start_time": b, "end_time": b + rng.width, "results": results.get(b, [])}
        for b in rng.buckets
    ]
    return {"object": "page", "data": data, "has_more": rng.has_more, "next_page": rng.next_page}


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is not None, str(v) if v is not None else "") for v in key)


async def _aggregate(rt: Runtime, rng: Range, dims: list[str], filters: rollups.Filters) -> dict[Any, Any]:
    async with rt.read() as s:
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
        else:  # keyplane has no Agents API attribution per record
            out[g] = {"api_source": "unlabeled"}.get(g)
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
            "input_audio_tokens": int(sums["input_audio_tokens"]),
            "output_audio_tokens": int(sums["output_audio_tokens"]),
        }
    if kind not in ("file_search_calls", "code_interpreter_sessions"):
        r["num_model_requests"] = int(sums["model_requests"])
    return r | fields


async def usage(
    rt: Runtime, kind: str, rng: Range, group_by: list[str], filters: rollups.Filters, batch: bool | None = None
) -> dict[str, Any]:
    """The page of ``GET /v1/organization/usage/{kind}`` (``filters.kinds`` is ignored: the kind decides)."""
    if kind == "vector_stores":  # a gauge of the sizes the upstream reported (usage/storage.py)
        return _page(rng, await _vector_stores(rt, rng, group_by, filters.project_ids))
    record_kinds = USAGE_KINDS.get(kind) or ((kind,) if kind in TOOL_KINDS else None)
    results: dict[int, list[dict[str, Any]]] = {}
    kinds = _batch_kinds(record_kinds, batch) if record_kinds else ()
    if kind in METERED and kinds:
        dims = [g for g in group_by if g in _SQL_DIMS]
        by_batch = "batch" in group_by
        filters = rollups.Filters(filters.project_ids, filters.api_key_ids, filters.user_ids, filters.models, kinds)
        acc = await _aggregate(rt, rng, [*dims, "kind"] if by_batch else dims, filters)
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
    return _page(rng, results)


async def _vector_stores(
    rt: Runtime, rng: Range, group_by: list[str], project_ids: tuple[str, ...]
) -> dict[int, list[dict[str, Any]]]:
    from keyplane.usage.storage import bucket_sizes

    by_project = "project_id" in group_by
    async with rt.read() as s:
        conn = await s.connection()
        sizes = await bucket_sizes(conn, rng.buckets, rng.width, project_ids, by_project)
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


async def costs(
    rt: Runtime,
    rng: Range,
    group_by: list[str],
    filters: rollups.Filters,
    line_items: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The page of ``GET /v1/organization/costs`` (``line_items``: only those line items)."""
    by_line = "line_item" in group_by or bool(line_items)
    dims = [g for g in group_by if g in _SQL_DIMS]
    sql_dims = [*dims, "model", "kind"] if by_line else dims
    acc = await _aggregate(rt, rng, sql_dims, filters)
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
    return _page(rng, results)
