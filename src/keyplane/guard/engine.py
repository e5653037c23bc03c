"""The kill switch at run time: the observe step, the background evaluator, rule reloads, resolves.

The observe step (keyplane.pipeline) only lists the request in the in-memory windows (guard/windows.py): no SQL,
no Redis, no evaluation on the request path. A background task wakes up, folds what was listed into the windows
(and so learns which keys and projects are dirty), flushes them (Redis, for a fleet), evaluates the rules on the
dirty keys and projects, and acts (actions.py). Another loop watches the control-plane revision: rules changed over
the API on any instance are reloaded from SQL, and a key that the kill switch suspended and someone resumed gets its
alert resolved (PagerDuty resolve with the same dedup_key).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from keyplane import alerts
from keyplane.degrade import Outage, store_outage
from keyplane.guard import actions, detectors
from keyplane.guard.rules import Rule, config_rules, effective
from keyplane.guard.windows import MemoryWindows, RedisWindows, View
from keyplane.periodic import backoff, cancel_and_wait

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.guard")
# A Redis outage is logged once when it starts and once when it ends, not on every pass (a pass runs
# after every observed request: a traceback each was hundreds of lines per second; issue 15, finding 11).
_windows_outage = Outage("Redis", "the kill switch's windows (evaluation paused)", log)
_subscription_outage = Outage("Redis", "the guard's revision subscription (polling meanwhile)", log)


def _failed(outage: Outage, e: Exception, what: str) -> None:
    if store_outage(e) is not None:
        outage.failed(e)
    else:
        log.warning("guard: %s failed; will retry", what, exc_info=True)


UPSTREAM_NOT_PROBING = frozenset({401, 403, 404})  # upstream answers error_spike never counts
MIN_PASS_INTERVAL = 0.05  # seconds between evaluation passes under load (coalesces bursts)
SWEEP_INTERVAL = 60.0


class Guard:
    def __init__(self, rt: Runtime, windows: MemoryWindows, dispatcher: alerts.Dispatcher, redis: Any = None) -> None:
        self.rt = rt
        self.clock = rt.clock
        self.windows = windows
        self.alerts = dispatcher
        self.redis = redis  # pub/sub for immediacy in a fleet (the revision poll is the guarantee)
        section = rt.settings.file.guard
        self.enabled = section.enabled
        self.base_rules: dict[str, Rule] = config_rules(section)
        self.rules: dict[str, Rule] = dict(self.base_rules)
        self.rule_times: dict[str, int] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self._by_scope: dict[str, list[Rule]] = {"key": [], "project": []}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._revision = -1
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = f"{redis_namespace(rt)}:revision"
        self._apply_rules(self.rules)

    # --- rules ---------------------------------------------------------------------------------

    def _apply_rules(self, rules: dict[str, Rule]) -> None:
        self.rules = rules
        active = [r for r in rules.values() if r.spec.enabled] if self.enabled else []
        self.windows.fold()  # what was observed goes to the series of the rules it was observed under
        # The series each observed request goes to, and whether its origins are kept (the windows' fold reads them)
        self.windows.plan = tuple(sorted({(r.scope, r.window_s) for r in active}))
        self.windows.track_origins = any(r.kind == "new_origins" for r in active)
        self._by_scope = {
            "key": [r for r in active if r.scope == "key"],
            "project": [r for r in active if r.scope == "project"],
        }
        retention: dict[float, int] = {}
        for r in active:
            n = r.spec.baseline_periods if r.kind in ("token_surge", "spend_surge") else 0
            retention[r.window_s] = max(retention.get(r.window_s, 0), n)
        self.windows.retention = retention

    async def reload_rules(self) -> None:
        """Config rules overlaid by those stored in SQL (changed over the API on any instance)."""
        from keyplane.guard.store import load_stored

        try:
            async with self.rt.read() as s:
                stored, times = await load_stored(s)
        except Exception:
            log.warning("could not read the guard rules from the store; keeping the current set", exc_info=True)
            return
        self.rule_times = times
        self._apply_rules(effective(self.base_rules, stored))

    # --- the observe step (hot path) -------------------------------------------------------------

    def observe(self, ctx: RequestContext) -> None:
        key = ctx.key
        if not self.windows.plan or key.kind == "admin":
            return
        status = ctx.status
        # Only what says something about the client counts. An upstream 401/403 says keyplane's
        # provider credential is wrong; an upstream 404 that the upstream does not implement the path
        # or the endpoint (ordinary exploration, docs/guard.md). Neither is probing with a stolen key.
        err = status if 400 <= status < 500 and not (status in UPSTREAM_NOT_PROBING and ctx.upstream) else 0
        obs = (
            key.id,
            ctx.project_id,
            self.clock.now(),
            ctx.prompt_tokens + ctx.completion_tokens,
            ctx.cost_micros,
            err,
            ctx.client_ip,
            ctx.user_agent,
        )
        if self.windows.observe(obs):  # listed: the evaluator folds it into the windows (guard/windows.py)
            self._wake.set()

    # --- evaluation (background) -----------------------------------------------------------------

    async def run_pass(self) -> int:
        """Flush, evaluate every dirty key and project, act; returns the number of firings."""
        async with self._lock:
            try:
                await self.windows.flush(self.clock.now())
            except Exception as e:
                self.counters["flush_errors"] += 1
                _failed(_windows_outage, e, "flushing the windows")
                return 0
            _windows_outage.ok()
            dirty, self._dirty = self._dirty | self.windows.take_touched(), set()
            fired = 0
            now = self.clock.now()
            todo = [e for e in dirty if self._by_scope[_scope(e)] and self._targets(_scope(e), e[2:], now)]
            wanted = sorted({(e, r.window_s) for e in todo for r in self._by_scope[_scope(e)]})
            try:
                views = await self.windows.views(wanted, now)
            except Exception as e:
                self.counters["evaluation_errors"] += 1
                _failed(_windows_outage, e, "reading the windows")
                self._dirty |= dirty
                return 0
            for ent in todo:
                try:
                    fired += await self._evaluate(ent, now, views)
                except Exception:
                    self.counters["evaluation_errors"] += 1
                    log.exception("guard: evaluating %s failed", ent)
            self.counters["passes"] += 1
            return fired

    def _targets(self, scope: str, eid: str, now: float) -> list[Any]:
        snap = self.rt.snapshot
        if scope == "key":
            e = snap.keys_by_id.get(eid)
            return [e] if e is not None and e.status(now) == "active" else []
        return [
            e
            for e in snap.keys_by_id.values()
            if e.project_id == eid and e.kind != "admin" and e.status(now) == "active"
        ]

    async def _evaluate(self, ent: str, now: float, views: dict[tuple[str, float], View]) -> int:
        scope = _scope(ent)
        eid = ent[2:]
        fired = 0
        for rule in self._by_scope[scope]:
            view = views[(ent, rule.window_s)]
            if rule.kind == "new_origins":
                ips, uas, first = await self.windows.new_origins(ent, now - rule.window_s)
                finding = detectors.new_origins(rule, view, eid, ips, uas, first, now)
            else:
                finding = detectors.evaluate(rule, view, eid)
            self.counters["evaluations"] += 1
            if finding is None:
                continue
            claim = f"{rule.name}:{ent}"
            if not await self.windows.claim(claim, now, rule.cooldown_s):
                self.counters["cooldown_suppressed"] += 1
                continue
            targets = self._targets(scope, eid, now)
            if not targets:
                continue
            try:
                await actions.fire(self, finding, targets, now)
            except Exception:
                self.counters["action_errors"] += 1
                log.exception("guard: acting on rule %s for %s failed", rule.name, ent)
                await self.windows.release(claim)
                continue
            self.counters[f"fired:{rule.mode}"] += 1
            fired += 1
        return fired

    async def drain(self) -> None:
        """Evaluate what is pending now and wait for the alerts it sent (tests and shutdown)."""
        await self.run_pass()
        await self.alerts.drain()

    async def _evaluator(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.run_pass()
            await asyncio.sleep(MIN_PASS_INTERVAL)

    # --- the control-plane watch (background) ----------------------------------------------------

    async def on_revision(self) -> None:
        self._revision = self.rt.snapshot.revision
        await self.reload_rules()
        try:
            await actions.resolve_resumed(self)
        except Exception:
            log.warning("guard: resolving resumed keys failed; will retry", exc_info=True)

    async def _watch(self) -> None:
        interval = min(1.0, self.rt.settings.snapshot_poll_seconds)  # the fallback: on_change wakes it at once
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: on 3.11 it can swallow a cancellation
                    await self._snapshot_moved.wait()
            self._snapshot_moved.clear()
            try:
                if self.rt.snapshot.revision != self._revision:
                    await self.on_revision()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL
                    await self.windows.sweep(self.clock.now())
            except Exception:
                log.warning("guard: watch step failed", exc_info=True)

    async def _listen(self) -> None:
        """Redis pub/sub: another instance changed something; reload the snapshot now."""
        retries = 0
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    _subscription_outage.ok()
                    retries = 0
                    async for msg in pubsub.listen():
                        if msg.get("type") == "message":
                            await self.rt.refresher.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                _failed(_subscription_outage, e, "the Redis subscription")
                await asyncio.sleep(backoff(retries, 0.5, 10.0))  # 0.5 s, doubled per retry, at most 10 s
                retries += 1

    async def publish(self) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.publish(self.channel, str(self.rt.snapshot.revision))
        except Exception:
            log.warning("guard: could not publish the revision on Redis (instances will poll it)", exc_info=True)

    async def start(self) -> None:
        self._snapshot_moved = asyncio.Event()
        self.rt.snapshot.on_change(self._snapshot_moved.set)
        await self.on_revision()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._evaluator(), name="guard-evaluator"),
            loop.create_task(self._watch(), name="guard-watch"),
        ]
        if self.redis is not None:
            self._tasks.append(loop.create_task(self._listen(), name="guard-pubsub"))

    async def stop(self) -> None:
        for t in self._tasks:
            await cancel_and_wait(t)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.run_pass(), 5)
        await self.windows.aclose()
        if self.redis is not None and self.redis is not getattr(self.windows, "redis", None):
            await self.redis.aclose()


def redis_namespace(rt: Runtime) -> str:
    """Where the kill switch's Redis keys and pub/sub channel live: under ``redis_prefix``, like every
    other key keyplane writes, so that deployments (or tests) sharing one Redis never see each other."""
    return f"{rt.settings.redis_prefix}:guard:{rt.snapshot.org_id or 'org'}"


def _scope(ent: str) -> str:
    return "key" if ent[0] == "k" else "project"


async def create(rt: Runtime) -> Guard:
    dispatcher = alerts.for_runtime(rt)
    windows: MemoryWindows
    redis = None
    if rt.settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(rt.settings.redis_url)
        windows = RedisWindows(redis, redis_namespace(rt))
    else:
        windows = MemoryWindows()
    return Guard(rt, windows, dispatcher, redis)


async def open_incidents(s: Any) -> list[Any]:
    from keyplane.guard.models import GuardEvent
    from keyplane.store.models import ApiKey

    stmt = (
        select(GuardEvent)
        .join(ApiKey, ApiKey.id == GuardEvent.key_id)
        .where(
            GuardEvent.action == "suspended",
            GuardEvent.resolved_at.is_(None),
            ApiKey.revoked_at.is_(None),
            ApiKey.suspended_at.is_(None),
        )
    )
    return list((await s.execute(stmt)).scalars())
