"""How features plug into the request flow without the proxy knowing them.

The proxy calls ``rt.extras["admit"](ctx)`` after authentication and authorization, before any
upstream call, and ``rt.extras["settle"](ctx)`` once the response is complete (streams, disconnects
and failures after the upstream included). Features register their steps here at start-up, in the
order of the flow (DESIGN.md: admit -> ... -> settle -> record -> observe): lower ``order`` first.

Conventional orders: limits/billing admit 10 and settle 10 (they fill the cost), the usage journal
settle 20, metrics and the kill switch settle 30.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Step = Callable[[Any], Awaitable[None]]


def _add(rt: Any, name: str, fn: Step, order: int) -> None:
    steps: list[tuple[int, int, Step]] = rt.extras.setdefault(f"_{name}_steps", [])
    steps.append((order, len(steps), fn))
    steps.sort(key=lambda t: (t[0], t[1]))
    chain = tuple(f for _, _, f in steps)
    if len(chain) == 1:
        rt.extras[name] = chain[0]
        return

    async def run_all(ctx: Any) -> None:
        for f in chain:
            await f(ctx)

    rt.extras[name] = run_all


def add_admit(rt: Any, fn: Step, order: int = 10) -> None:
    """An admission step: raise an errors.APIError to refuse the request."""
    _add(rt, "admit", fn, order)


def add_settle(rt: Any, fn: Step, order: int = 20) -> None:
    """A step run after the response completes; it must not raise (log and count instead)."""
    _add(rt, "settle", fn, order)


def add_refused(rt: Any, fn: Step, order: int = 30) -> None:
    """A step run when an authenticated key is refused before the upstream (403 scope, 404 model, 429...)."""
    _add(rt, "refused", fn, order)
