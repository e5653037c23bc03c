"""What a batch produced: its output file read into lines, and the usage records they make (billing/batch_meter.py).

Each output line with usage is one record (kind ``batch_completions``, ``batch_responses`` or
``batch_embeddings``; id derived from the batch id and the line's ``custom_id``) at the batch price, plus one
per hosted tool kind the line called (``web_search_calls``..., at the full price per call). An output that can
never be read is one estimated record of the batch's reservation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
import orjson

from keyplane.billing import quote_tools
from keyplane.billing.batch_input import LINE_KINDS
from keyplane.billing.price import MICROS, Price
from keyplane.billing.prices import PriceTable
from keyplane.store.models import BatchCost

if TYPE_CHECKING:
    from keyplane.usage.journal import Record

MAX_OUTPUT_LINE: Final = 16 * 1024 * 1024  # a longer output line is not JSON keyplane reads


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


def dearest(prices: PriceTable, models: list[str]) -> tuple[str, Price] | None:
    """The model of the input file with the highest prices: what an output line naming no priced model costs."""
    best: tuple[str, Price] | None = None
    for m in models:
        p = prices.lookup(m)
        if p is not None and p.tokens and (best is None or (p.input + p.output) > (best[1].input + best[1].output)):
            best = (m, p)
    return best


@dataclass(slots=True)
class Metered:
    """The usage records of a batch and what they add up to."""

    records: list[Record]
    total: int  # micro-dollars
    tokens_in: int
    tokens_out: int


def usage_records(
    row: BatchCost,
    data: dict[str, Any],
    endpoint: str,
    lines: list[Line],
    unread: str | None,
    prices: PriceTable,
    org_id: str | None,
    user_id: str | None,
    now: float,
) -> Metered:
    """The records of a batch's output ``lines`` (``data``: its row's kept reservation and models), or, when its
    output can never be read (``unread`` says why), one estimated record of what was reserved for it."""
    from keyplane.usage.journal import Record

    fallback = dearest(prices, data.get("models") or [])
    kind = LINE_KINDS.get(endpoint, "batch_completions")
    records: list[Record] = []
    total = tokens_in = tokens_out = 0
    # each call at the price of the tool its requests enable (any other: the dearest of its kind)
    per_call = {**quote_tools.tool_prices(prices), **(data.get("tool_prices") or {})}
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
            org_id,
            row.project_id,
            row.api_key_id,
            user_id,
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
        for tool_kind, micros in quote_tools.tool_cost(per_call, ln.tools).items():
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
                org_id,
                row.project_id,
                row.api_key_id,
                user_id,
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
    return Metered(records, total, tokens_in, tokens_out)
