"""Whether a request in flight may go on (DESIGN.md rule 1: a revoked key is refused everywhere within a second).

A request's authority is its key (not revoked, suspended, deleted or expired), its project (active) and, for a
keyless key, its workload rule. The handler checks it for every chunk it relays; :class:`Patrol` checks every
running request every :data:`PATROL_SECONDS`, so a call that is waiting (a non-streamed answer, a stream whose
provider is silent while a model reasons, a long upload) is cut too: its task is cancelled, the upstream
connection dropped, and the client told why (proxy/handler.py). One set insert and one removal per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from keyplane import errors
from keyplane.periodic import Periodic
from keyplane.proxy.context import RequestContext
from keyplane.runtime import Runtime

PATROL_SECONDS: Final = 0.5
# A forwarded request starts listening for its client's disconnect this long after it went upstream: most
# answers are in by then, and a listener (a task reading the ASGI receive channel) costs each request a task
# and its wake-ups. A client gone sooner is seen then (its request cut at most this late).
LISTEN_AFTER: Final = 0.02


def ended(rt: Runtime, ctx: RequestContext) -> errors.APIError | None:
    """Why a request in flight must be cut now (its key revoked, suspended, deleted or expired, its project
    archived: docs/guard.md; a workload token's federation rule or provider disabled), or None. A few dict
    lookups and an identity check: cheap enough for every chunk."""
    snap, key = rt.snapshot, ctx.key
    now_key = snap.keys_by_id.get(key.id)
    if now_key is not key and (now_key is None or now_key.revoked_at or now_key.suspended_at):
        why = now_key.inactive_reason(rt.clock.now()) if now_key else "has been deleted."
        ctx.error = "key_disabled"
        return errors.key_inactive(key.redacted_value, why or "is no longer active.")
    if now_key is not None and now_key.expires_at is not None:  # a key that expires mid-stream
        why = now_key.inactive_reason(rt.clock.now())
        if why:
            ctx.error = "key_disabled"
            return errors.key_inactive(key.redacted_value, why)
    identity = rt.features.identity
    if identity is not None and (gone := identity.key_ended(key.id)):  # a keyless key's rule
        ctx.error = "key_disabled"
        return errors.key_inactive(key.redacted_value, gone)
    if ctx.project_id is not None:
        p = snap.projects.get(ctx.project_id)
        if p is None or p.status != "active":
            ctx.error = "project_archived"
            return errors.project_archived(key.redacted_value, p.name if p else ctx.project_id, ctx.project_id)
    return None


class Watch:
    """One forwarded request's watch: cancels its task when the client disconnects (DESIGN.md hot-path rule 7)
    or, through :class:`Patrol`, when its authority ends (``cut`` then says why)."""

    __slots__ = ("_receive", "_timer", "_waiter", "armed", "ctx", "cut", "fired", "settled", "task")

    def __init__(self, task: asyncio.Task[Any] | None, ctx: RequestContext | None = None) -> None:
        self.task = task
        self.ctx = ctx
        self.armed = True  # off once the request settles: nothing is cancelled after that
        self.fired = False
        self.settled = False
        self.cut: errors.APIError | None = None
        self._receive: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[Any] | None = None

    def listen(self, receive: Any, after: float = LISTEN_AFTER) -> None:
        """Reads the client's side (``receive``, the ASGI channel) for its disconnect, from ``after`` seconds on."""
        self._receive = receive
        self._timer = asyncio.get_running_loop().call_later(after, self._start)

    def _start(self) -> None:
        self._timer = None
        if self.armed:
            self._waiter = asyncio.ensure_future(self._receive())
            self._waiter.add_done_callback(self)

    def stop(self) -> None:
        """Stops listening (the request is over)."""
        self.armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        if not self.armed or self.fired or fut.cancelled() or fut.exception() is not None:
            return  # settled, or already cut (by the patrol): cancelled once
        if fut.result().get("type") == "http.disconnect" and self.task is not None:
            self.fired = True
            self.task.cancel()

    def end(self, cut: errors.APIError) -> None:
        if self.armed and not self.fired and self.task is not None:
            self.cut = cut
            self.fired = True
            self.task.cancel()


class Patrol:
    """Every running request's authority, checked every :data:`PATROL_SECONDS` while any runs."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.running: set[Watch] = set()
        self._periodic: Periodic | None = None

    def add(self, w: Watch) -> None:
        if self._periodic is None:
            self._periodic = Periodic("authority patrol", self.step, PATROL_SECONDS).start()
        self.running.add(w)

    def discard(self, w: Watch) -> None:
        self.running.discard(w)

    async def step(self) -> None:
        rt = self.rt
        for w in list(self.running):
            if w.armed and not w.fired and w.ctx is not None and (cut := ended(rt, w.ctx)) is not None:
                w.end(cut)

    async def aclose(self) -> None:
        if self._periodic is not None:
            await self._periodic.stop()
            self._periodic = None
