"""What the kill switch costs the data plane: microseconds per request in its settle step.

    .venv/bin/python bench/guard_bench.py [--requests 200000] [--keys 1000]

Feeds RequestContext objects straight to ``Guard.observe`` (the pipeline's observe step, after every response) on a
fake clock that advances 50 ms per request, with the fold of what it listed into the windows (guard/windows.py,
done by the evaluator before it reads them) counted per request too, for three rule sets:
the shipped defaults (token-surge 1h + error-spike 10m), all five kinds (adds a project-scope
spend surge, a ceiling and new_origins, which tracks client IPs and user agents), and the defaults
with the Redis backend (the settle step is the same in-memory update; Redis is written by the
background flush, measured separately as "flush+evaluate per dirty key"). Reports the mean and the
p99 over batches of 1,000 settle calls, and the background pass cost. No sockets on the measured path.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from types import SimpleNamespace
from typing import Any

from keyplane import alerts
from keyplane.clock import FakeClock
from keyplane.config import GuardRule, GuardSection
from keyplane.features import Features
from keyplane.guard.engine import Guard
from keyplane.guard.rules import DEFAULT_RULES
from keyplane.guard.windows import MemoryWindows, RedisWindows
from keyplane.proxy.context import RequestContext
from keyplane.scopes import parse_permissions
from keyplane.snapshot import KeyEntry

ALL_KINDS = [
    *DEFAULT_RULES,
    GuardRule(name="spend", kind="spend_surge", scope="project", threshold=3.0, min_volume=5.0),
    GuardRule(name="cap", kind="ceiling", threshold=5_000_000, mode="alert"),
    GuardRule(name="origins", kind="new_origins", threshold=50, min_volume=100, mode="alert"),
]


def _entry(i: int) -> KeyEntry:
    return KeyEntry(
        id=f"key_{i:024d}",
        kind="proj",
        name=f"k{i}",
        redacted_value="sk-kp-...abcd",
        project_id=f"proj_{i % 20}",
        owner_user_id=None,
        service_account_id=None,
        permissions=parse_permissions("all"),
        expires_at=None,
        revoked_at=None,
        revoke_reason=None,
        suspended_at=None,
        suspend_reason=None,
    )


def _guard(rules: list[GuardRule], windows: MemoryWindows, clock: FakeClock) -> Guard:
    settings = SimpleNamespace(
        file=SimpleNamespace(guard=GuardSection(defaults=False, rules=rules)),
        snapshot_poll_seconds=0.5,
        redis_prefix="kp_bench_guard",
    )
    rt = SimpleNamespace(
        settings=settings,
        clock=clock,
        snapshot=SimpleNamespace(org_id="org-bench", keys_by_id={}, projects={}),
        features=Features(),
    )
    return Guard(rt, windows, alerts.Dispatcher([]))


async def _settle_cost(guard: Guard, clock: FakeClock, ctxs: list[RequestContext], n: int) -> tuple[float, float]:
    batch = 1000
    per_batch: list[float] = []
    observe = guard.observe
    for start in range(0, n, batch):
        t0 = time.perf_counter()
        for i in range(start, start + batch):
            observe(ctxs[i % len(ctxs)])
            clock.advance(0.05)
        guard.windows.fold()  # the requests listed, added to the series: counted per request with the step
        per_batch.append((time.perf_counter() - t0) / batch * 1e6)
        guard.windows.take_touched()  # the evaluator's job (flush, evaluate), off the request path
        await guard.windows.flush(clock.now())
    per_batch.sort()
    return statistics.fmean(per_batch), per_batch[int(len(per_batch) * 0.99) - 1]


async def _pass_cost(guard: Guard, clock: FakeClock, ctxs: list[RequestContext], keys: int) -> float:
    """Steady state: one request per key, then one background pass; the median of a few rounds."""
    guard.rt.snapshot.keys_by_id = {c.key.id: c.key for c in ctxs[:keys]}
    per_key: list[float] = []
    for _ in range(6):
        for c in ctxs[:keys]:
            guard.observe(c)
        clock.advance(5)
        t0 = time.perf_counter()
        await guard.run_pass()
        per_key.append((time.perf_counter() - t0) / keys * 1e6)
    return statistics.median(per_key[1:])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    entries = [_entry(i) for i in range(args.keys)]
    ctxs = [
        RequestContext(
            request_id="req_bench",
            key=entries[i % args.keys],
            project_id=entries[i % args.keys].project_id,
            endpoint="/v1/chat/completions",
            model="gpt-4o-mini",
            upstream="openai",
            status=404 if i % 50 == 0 else 200,
            prompt_tokens=420,
            completion_tokens=180,
            cost_micros=900,
            client_ip=f"10.0.{i % 7}.{i % 5}",
            user_agent="OpenAI/Python 1.99",
        )
        for i in range(args.keys * 4)
    ]
    print(f"settle step, {args.requests:,} requests over {args.keys:,} keys (mean and p99 of 1,000-call batches)")
    rows: list[tuple[str, float, float, float]] = []
    for label, rules, backend in (
        ("defaults, memory", list(DEFAULT_RULES), "memory"),
        ("all five kinds, memory", ALL_KINDS, "memory"),
        ("defaults, Redis", list(DEFAULT_RULES), "redis"),
    ):
        clock = FakeClock()
        redis: Any = None
        if backend == "redis":
            import redis.asyncio as aioredis

            redis = aioredis.from_url(args.redis)
            windows: MemoryWindows = RedisWindows(redis, "keyplane:bench")
        else:
            windows = MemoryWindows()
        guard = _guard(rules, windows, clock)
        mean, p99 = await _settle_cost(guard, clock, ctxs, args.requests)
        guard.windows.take_touched()
        per_key = await _pass_cost(guard, clock, ctxs, min(args.keys, 500))
        rows.append((label, mean, p99, per_key))
        if redis is not None:
            keys = [k async for k in redis.scan_iter("keyplane:bench:*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()
    print(f"{'rules':<26}{'settle mean us':>16}{'settle p99 us':>16}{'flush+evaluate per dirty key us':>34}")
    for label, mean, p99, per_key in rows:
        print(f"{label:<26}{mean:>16.2f}{p99:>16.2f}{per_key:>34.1f}")


if __name__ == "__main__":
    asyncio.run(main())
