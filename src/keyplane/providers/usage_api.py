"""The Usage and Costs API over ingested provider buckets: ``source=provider:<name>`` (keyplane extension).

keyplane.usage.api hands a request with a ``source`` parameter to these functions after validating the
range and group_by; answers keep the OpenAI shapes. Provider usage is hourly, so ``bucket_width=1m`` is
refused; project, key and model ids are the provider's own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request

from keyplane import errors
from keyplane.admin.common import JSONResponse, query_list, runtime
from keyplane.providers.models import ProviderUsage

_DIMS = ("project_id", "api_key_id", "model")


def _provider(request: Request, source: str, width: int) -> str:
    rt = runtime(request)
    name = source.removeprefix("provider:") if source.startswith("provider:") else ""
    if not any(p.name == name for p in rt.settings.file.providers):
        raise errors.bad_request(
            "Invalid 'source': use provider:<name> of a provider in [[providers]].",
            param="source",
            code="invalid_value",
        )
    if width < 3600:
        raise errors.bad_request(
            "Provider usage is hourly: use bucket_width 1h or 1d.", param="bucket_width", code="invalid_value"
        )
    return name


async def _rows(request: Request, name: str, rng: Any, costs: bool) -> list[ProviderUsage]:
    q = select(ProviderUsage).where(
        ProviderUsage.provider == name,
        ProviderUsage.start_time >= rng.q_lo - rng.q_lo % 3600,
        ProviderUsage.start_time < rng.q_hi,
    )
    q = q.where(ProviderUsage.stream == "costs") if costs else q.where(ProviderUsage.stream != "costs")
    for param, col in (
        ("project_ids", ProviderUsage.project_id),
        ("api_key_ids", ProviderUsage.api_key_id),
        ("models", ProviderUsage.model),
    ):
        values = query_list(request, param)
        if values:
            q = q.where(col.in_(values))
    async with runtime(request).read() as s:
        return list((await s.execute(q)).scalars())


def _page(rng: Any, results: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    data = [
        {"object": "bucket", "start_time": b, "end_time": b + rng.width, "results": results.get(b, [])}
        for b in rng.buckets
    ]
    return {"object": "page", "data": data, "has_more": rng.has_more, "next_page": rng.next_page}


async def provider_usage(request: Request, kind: str, rng: Any, group_by: list[str], source: str) -> JSONResponse:
    name = _provider(request, source, rng.width)
    dims = [g for g in group_by if g in _DIMS]
    sums: dict[tuple[Any, ...], list[int]] = {}
    for r in await _rows(request, name, rng, costs=False):
        if r.stream != kind:
            continue
        bucket = r.start_time - r.start_time % rng.width
        key = (bucket, *(getattr(r, d) or None for d in dims))
        acc = sums.setdefault(key, [0, 0, 0])
        acc[0] += r.input_tokens
        acc[1] += r.output_tokens
        acc[2] += r.requests
    results: dict[int, list[dict[str, Any]]] = {}
    for key in sorted(sums, key=lambda k: tuple(str(x) for x in k)):
        tin, tout, n = sums[key]
        fields = dict(zip(dims, key[1:], strict=True))
        item: dict[str, Any] = {
            "object": f"organization.usage.{kind}.result",
            "input_tokens": tin,
            "num_model_requests": n,
            "source": f"provider:{name}",
        }
        if kind == "completions":
            item["output_tokens"] = tout
        item |= {d: fields.get(d) for d in _DIMS}
        results.setdefault(key[0], []).append(item)
    return JSONResponse(_page(rng, results))


async def provider_costs(request: Request, rng: Any, group_by: list[str], source: str) -> JSONResponse:
    name = _provider(request, source, rng.width)
    by_project = "project_id" in group_by
    sums: dict[tuple[int, str | None], int] = {}
    for r in await _rows(request, name, rng, costs=True):
        key = (r.start_time - r.start_time % rng.width, r.project_id or None if by_project else None)
        sums[key] = sums.get(key, 0) + r.cost_micros
    results: dict[int, list[dict[str, Any]]] = {}
    for (bucket, pid), micros in sorted(sums.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        results.setdefault(bucket, []).append(
            {
                "object": "organization.costs.result",
                "amount": {"value": micros / 1e6, "currency": "usd"},
                "line_item": None,
                "project_id": pid,
                "source": f"provider:{name}",
            }
        )
    return JSONResponse(_page(rng, results))
