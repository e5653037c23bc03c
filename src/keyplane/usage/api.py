"""The OpenAI Usage and Costs API under /v1/organization, and the per-request listing (an extension).

Shapes and parameters are those of the official SDK (openai.resources.admin.organization.usage and
openai.types.admin.organization.usage_*): ``{"object": "page", "data": [buckets], "has_more",
"next_page"}``, each bucket ``{"object": "bucket", "start_time", "end_time", "results": [...]}``.

Buckets are aligned on UTC multiples of the width (minutes, hours, days); only usage between
start_time (inclusive) and end_time (exclusive) is counted, to the second (rollups.py). Every bucket
of the page is listed, empty ones with ``results: []``. ``next_page`` is an opaque cursor naming the
next bucket (and the end of the range, so that pages agree when end_time defaults to now).

This module reads the query string; the queries are usage/queries.py's and usage/records.py's, which the
dashboard calls too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, or_
from starlette.requests import Request

from keyplane import errors
from keyplane.admin.common import JSONResponse, authenticate_admin, query_list, runtime
from keyplane.admin.params import parse_int, query_bool, query_limit, query_timestamp
from keyplane.lists import list_response
from keyplane.usage import queries, records, rollups
from keyplane.usage.models import UsageRequest
from keyplane.usage.queries import COSTS_GROUP_BY, GROUP_BY, Range

P = "/v1/organization"


def _range(request: Request, *, costs: bool = False) -> Range:
    """start_time, end_time, bucket_width, limit and page of a bucketed query (validated in that order)."""
    start = query_timestamp(request, "start_time", required=True) or 0
    end = query_timestamp(request, "end_time")
    bw = request.query_params.get("bucket_width") or "1d"
    default, maximum = queries.check_width(bw, costs)
    limit = query_limit(request, default, maximum)
    page = request.query_params.get("page")
    return Range(runtime(request), start, end, bw, limit, page, costs=costs)


def _filters(request: Request) -> rollups.Filters:
    return rollups.Filters(
        project_ids=tuple(query_list(request, "project_ids")),
        api_key_ids=tuple(query_list(request, "api_key_ids")),
        user_ids=tuple(query_list(request, "user_ids")),
        models=tuple(query_list(request, "models")),
    )


def _usage_handler(kind: str) -> Callable[[Request], Any]:
    allowed = GROUP_BY[kind]

    async def handler(request: Request) -> JSONResponse:
        authenticate_admin(request)
        rng = _range(request)
        group_by = queries.check_group_by(query_list(request, "group_by"), allowed)
        if (source := request.query_params.get("source")) is not None:  # ingested provider usage: docs/providers.md
            from keyplane.providers.usage_api import provider_usage

            return await provider_usage(request, kind, rng, group_by, source)
        batch: bool | None = None
        if kind != "vector_stores":
            batch = query_bool(request, "batch") if request.query_params.get("batch") else None
            for unsupported in ("sizes", "sources"):  # not kept per request: refused rather than ignored
                if query_list(request, unsupported):
                    raise errors.bad_request(
                        f"keyplane does not keep image {unsupported} per request: '{unsupported}' is not supported.",
                        param=unsupported,
                        code="invalid_value",
                    )
        return JSONResponse(await queries.usage(runtime(request), kind, rng, group_by, _filters(request), batch))

    handler.__name__ = f"usage_{kind}"
    return handler


async def costs(request: Request) -> JSONResponse:
    authenticate_admin(request)
    rng = _range(request, costs=True)
    group_by = queries.check_group_by(query_list(request, "group_by"), COSTS_GROUP_BY)
    if (source := request.query_params.get("source")) is not None:  # ingested provider costs: docs/providers.md
        from keyplane.providers.usage_api import provider_costs

        return await provider_costs(request, rng, group_by, source)
    # Not query_list: a line item has a comma in it ("gpt-4o, input").
    line_items = set(request.query_params.getlist("line_items[]") + request.query_params.getlist("line_items"))
    return JSONResponse(await queries.costs(runtime(request), rng, group_by, _filters(request), line_items))


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
    start, end = query_timestamp(request, "start_time"), query_timestamp(request, "end_time")
    records.check_times(start, end)
    limit = query_limit(request, 100, 1000)
    lists = {
        name: tuple(query_list(request, name))
        for name in ("project_ids", "api_key_ids", "user_ids", "models", "kinds", "upstreams")
    }
    statuses = query_list(request, "status")
    q = records.RequestQuery(
        start=start,
        end=end,
        limit=limit,
        after=request.query_params.get("after") or None,
        status=_status_clause(statuses) if statuses else None,
        **lists,
    )
    items, more = await records.requests(runtime(request), q)
    return JSONResponse(list_response(items, more))


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
