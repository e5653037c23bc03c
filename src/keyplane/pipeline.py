"""The request flow of the /v1 proxy, and the steps the features add to it (DESIGN.md "The pipeline").

    authenticate -> authorize -> admit -> forward -> relay -> settle -> record -> observe

The proxy runs the flow top to bottom in one function, :meth:`keyplane.proxy.handler.ProxyApp.__call__`
(its canonical request: proxy/canonical.py). What the features contribute is typed here, and
assembled once at start-up by the app, in the flow's order:

- ``billing`` (limits and billing) admits a request before the upstream call (rate limits, budgets,
  credit: reserved in one atomic step) and settles it after (the actual cost, the reservation's rest
  released);
- ``usage`` (metering) records it (the usage journal) and observes it (metrics, access log, trace);
- ``guard`` (the kill switch) observes it (anomaly windows);
- ``routing`` (prefix-affinity routing) releases the upstream it chose.

The observing steps are plain calls, not coroutines: they only add to memory, and the background work that follows
from them runs in their features' own tasks.

Every admitted request is settled exactly once, streams, client disconnects and upstream failures
included. Refusals of an authenticated key before the upstream (403, 404, 429...) are observed too:
metering counts them, the kill switch watches them for probing. A settle-side step never fails a
request: its errors are logged (the response is already on its way).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.proxy")

Step = Callable[["RequestContext"], Awaitable[None]]
# An observing step: plain calls that only add to memory (metrics, the access log's list, the kill switch's list).
Observer = Callable[["RequestContext"], None]


class Billing(Protocol):
    async def admit(self, ctx: RequestContext) -> None:
        """Raise an errors.APIError to refuse; may add x-ratelimit-* pairs to ``ctx.extra_headers``."""

    async def settle(self, ctx: RequestContext) -> None: ...


class Usage(Protocol):
    async def record(self, ctx: RequestContext) -> None: ...

    def observe(self, ctx: RequestContext) -> None: ...

    async def refused(self, ctx: RequestContext) -> None: ...

    def stream_started(self) -> None: ...

    def stream_ended(self) -> None: ...


class Guard(Protocol):
    def observe(self, ctx: RequestContext) -> None: ...


class Routing(Protocol):
    async def release_route(self, ctx: RequestContext) -> None: ...


@dataclass
class Pipeline:
    billing: Billing | None = None
    usage: Usage | None = None
    guard: Guard | None = None
    routing: Routing | None = None
    # Observers run last, after every feature (tracing exporters, tests that look at settled requests).
    taps: list[Step] = field(default_factory=list)

    def admit(self, ctx: RequestContext) -> Awaitable[None]:
        """Billing's admission (its own coroutine: one frame less on the request's await chain)."""
        if self.billing is not None:
            return self.billing.admit(ctx)
        return _nothing()

    async def settle(self, ctx: RequestContext, observe: bool = True) -> None:
        """settle -> record -> observe -> the taps, in this order, once per admitted request; a step's failure is
        logged and the next one runs. ``observe=False``: settle, record and the taps only, :meth:`observe` to follow
        once the answer is written (a JSON answer: its client is not kept waiting for metrics, the access log
        and the kill switch's windows; what the answer's cost and record need is done before it goes out)."""
        for step in self._answer_steps():
            try:
                await step(ctx)
            except Exception:
                log.exception("%s failed for %s", getattr(step, "__qualname__", step), ctx.request_id)
        if observe:
            self.observe(ctx)
        for step in self.taps:  # none in production: tracing exporters, tests
            await _run(step, ctx)

    def observe(self, ctx: RequestContext) -> None:
        """The observing steps (:meth:`observe_steps`), plain calls: what :meth:`settle` left out with
        ``observe=False``."""
        for step in self.observe_steps():
            _observe(step, ctx)

    def observe_steps(self) -> list[Observer]:
        """The usage observed (metrics, access log, trace) and the guard's observation (its list; the evaluator
        folds it into its windows and acts in the background). Built per call from the features set now (tests
        switch them), a list of a few bound methods."""
        steps: list[Observer] = []
        if self.usage is not None:
            steps.append(self.usage.observe)
        if self.guard is not None:
            steps.append(self.guard.observe)
        return steps

    def _answer_steps(self) -> list[Step]:
        steps: list[Step] = []
        if self.routing is not None:
            steps.append(self.routing.release_route)
        if self.billing is not None:
            steps.append(self.billing.settle)
        if self.usage is not None:
            steps.append(self.usage.record)
        return steps

    async def refused(self, ctx: RequestContext) -> None:
        """An authenticated key refused before any upstream call: counted, and watched for probing."""
        if self.usage is not None:
            await _run(self.usage.refused, ctx)
        if self.guard is not None:
            _observe(self.guard.observe, ctx)

    def stream_started(self) -> None:
        if self.usage is not None:
            self.usage.stream_started()

    def stream_ended(self) -> None:
        if self.usage is not None:
            self.usage.stream_ended()


async def _nothing() -> None:
    return None


def _observe(step: Observer, ctx: RequestContext) -> None:
    try:
        step(ctx)
    except Exception:
        log.exception("%s failed for %s", getattr(step, "__qualname__", step), ctx.request_id)


async def _run(step: Step, ctx: RequestContext) -> None:
    try:
        await step(ctx)
    except Exception:
        log.exception("%s failed for %s", getattr(step, "__qualname__", step), ctx.request_id)
