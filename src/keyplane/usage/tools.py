"""Hosted tool calls of a Responses answer as usage records of their own kinds.

A response that searched the web twice is one ``responses`` record (its tokens, and its cost without
the tools) and one ``web_search_calls`` record (``units`` = 2, the calls' cost), so the Usage API's
web_search_calls, file_search_calls and code_interpreter_sessions buckets and the Costs API see them. The
image generation tool's calls are an ``images`` record (``units`` = the images made).
Their ids are the request's with the kind appended: replays stay idempotent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from keyplane.usage.journal import Record

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

TOOL_KINDS = ("web_search_calls", "file_search_calls", "code_interpreter_sessions", "images")


def tool_records(ctx: RequestContext, rec: Record) -> list[Record]:
    """The tool records of a request; moves their cost out of ``rec`` (which keeps its tokens)."""
    calls: dict[str, list[int]] | None = ctx.tool_calls
    if not calls:
        return []
    out: list[Record] = []
    for kind in TOOL_KINDS:
        n, micros = calls.get(kind, (0, 0))
        if n <= 0:
            continue
        micros = min(micros, rec.cost_micros)
        rec.cost_micros -= micros
        rec.cost_input_micros = min(rec.cost_input_micros, rec.cost_micros)
        out.append(
            msgspec.structs.replace(
                rec,
                id=f"{rec.id}.{kind}"[:64],
                kind=kind,
                endpoint=rec.endpoint,
                input_tokens=0,
                cached_tokens=0,
                output_tokens=0,
                cost_micros=micros,
                cost_input_micros=0,
                latency_ms=0.0,
                ttft_ms=None,
                units=n,
            )
        )
    return out
