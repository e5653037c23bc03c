"""What a realtime response costs and how it is recorded (proxy/realtime_session.py relays the frames).

Each response is a RequestContext of its own, quoted as a Responses call, admitted through the pipeline
(limits, budgets, its output reserved) and settled -> recorded -> observed on its ``response.done`` with
the usage reported, by modality (text and audio input, cached, output: each at its own rate of the price
table, billing/prices.py). Refusals of the session's key (at the handshake, of a client event, of a
response) are metered and watched by the kill switch as an HTTP request refused is.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from keyplane import errors
from keyplane.proxy.context import RequestContext
from keyplane.proxy.realtime_policy import PATH
from keyplane.proxy.realtime_usage import usage_tokens
from keyplane.proxy.replies import new_request_id
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

# The per-response context is quoted as a Responses call (token prices, input up to the context window),
# then recorded under the realtime path: the Usage API reports it in the completions bucket, as OpenAI does.
_QUOTE_AS: Final = "/v1/responses"


def response_context(
    entry: KeyEntry, model: str, limit: int | None, client_ip: str | None, user_agent: str | None, upstream: str
) -> RequestContext:
    """A response of a session, not yet admitted: quoted as a Responses call whose output is ``limit``."""
    ctx = RequestContext(
        new_request_id().decode(),
        entry,
        entry.project_id,
        _QUOTE_AS,
        "POST",
        model,
        True,
        orjson.dumps({"model": model, "input": ""}),
        limit,
    )
    ctx.spending = True
    ctx.context_ref = True
    ctx.started = time.perf_counter()
    ctx.client_ip, ctx.user_agent = client_ip, user_agent
    ctx.upstream = upstream
    return ctx


async def admit(rt: Runtime, ctx: RequestContext) -> RequestContext:
    """The response admitted (raises errors.APIError when refused, after metering the refusal)."""
    try:
        await rt.pipeline.admit(ctx)
    except errors.APIError as e:
        await refused(rt, ctx, e)
        raise
    ctx.endpoint = PATH
    recorder = rt.features.usage_recorder
    if ctx.hold >= 0 and recorder is not None:  # its hold, quoted as a Responses call, under the endpoint recorded
        recorder.rehold(ctx)
    return ctx


async def settle(rt: Runtime, ctx: RequestContext, usage: dict[str, Any] | None, status: int) -> None:
    """The response settled at the usage its ``response.done`` reported; none reported (the upstream went
    away): the output reserved is billed, flagged as estimated."""
    ctx.status = status
    if isinstance(usage, dict):
        by = usage_tokens(usage)  # text and audio billed at their own rates (billing's settle)
        ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = by.prompt, by.cached, by.completion
        ctx.modalities = by
    else:
        ctx.usage_estimated = True
        ctx.completion_tokens = ctx.max_tokens or 0
    ctx.latency_ms = (time.perf_counter() - ctx.started) * 1000
    if ctx.ttft_ms is None:
        ctx.ttft_ms = ctx.latency_ms
    await rt.pipeline.settle(ctx)  # never raises


async def handshake_refused(rt: Runtime, entry: KeyEntry, e: errors.APIError, scope: dict[str, Any]) -> None:
    """A session refused at its handshake once its key was known (scope, model permission, no upstream):
    metered and watched by the kill switch, as an HTTP request refused is."""
    ctx = RequestContext(new_request_id().decode(), entry, entry.project_id, PATH, "GET")
    ctx.started = time.perf_counter()
    client = scope.get("client")
    ctx.client_ip = client[0] if client else None
    await refused(rt, ctx, e)


async def refused(rt: Runtime, ctx: RequestContext, e: errors.APIError) -> None:
    """Meter a refusal of the session's key (pipeline.refused: counted, and watched by the kill switch), as
    keyplane's own: not an upstream's error, which error_spike leaves out."""
    ctx.endpoint, ctx.upstream = PATH, None
    ctx.status, ctx.error = e.status, e.code
    await rt.pipeline.refused(ctx)
