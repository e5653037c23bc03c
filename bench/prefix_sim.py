"""Prefix-affinity routing, simulated: does keyplane's router keep prompt caches warm without hot spots?

    .venv/bin/python bench/prefix_sim.py [--requests 3000] [--seed 7] [--markdown]

A seeded discrete-event simulation in virtual time (no sleeping, no sockets). Replicas have ``slots``
concurrent request slots, a FIFO queue, and a prompt cache of their own: an LRU of 16-token blocks
over the prompt as the server renders it (ChatML, tokens = words), a scheme unlike the router's
(64-character blocks over its canonical text), so the router's approximation is what is tested.

Cost model: TTFT = queue wait + a x uncached prompt tokens; a slot is then held for b x output tokens.
Workloads: shared-prefix groups, multi-turn sessions, no sharing, one hot prefix with half the traffic.
Strategies: round robin, least loaded, consistent hashing with bounded loads (on the prompt's start,
no cache state), and keyplane: ``keyplane.cache.affinity.PrefixRouter.route``, the very code the proxy
calls (fed the same JSON bodies). Reports token hit rate, TTFT p50/p99, throughput, the routing cost
per request, and max/mean load (time-averaged in-flight requests per replica). Exits 1 when a floor
is missed: shared-prefix and multi-turn hit rate >= 3x round robin's with a lower p99 TTFT; no sharing
within 5% of least loaded (p99 TTFT, throughput); hot prefix max/mean load <= 1.5.
"""

from __future__ import annotations

import argparse
import array
import bisect
import heapq
import math
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from keyplane.cache.affinity import AffinityConfig, PrefixRouter

MODEL = "sim-model"
BLOCK = 16  # the replica's cache block, in tokens


@dataclass(frozen=True)
class Params:
    replicas: int = 8
    slots: int = 8
    cache_tokens: int = 12_000  # per replica
    a: float = 0.0002  # seconds per uncached prompt token (prefill)
    b: float = 0.02  # seconds per output token (decode)


@dataclass
class Request:
    body: bytes
    blocks: list[int]  # the replica's chained block hashes (full blocks)
    tokens: int  # prompt tokens as the replica counts them
    output: int
    session: int = -1
    turn: int = 0
    after: list[int] = field(default_factory=list)  # blocks of prompt + answer, cached once it is generated
    # filled by the simulation
    arrival: float = 0.0
    start: float = 0.0
    cached: int = 0
    replica: int = -1
    handle: Any = None


# --- text and the replica's view of it ------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_vocab: list[str] = []


def words(rng: random.Random, n: int) -> str:
    """``n`` random words of 2 to 6 letters (from a fixed vocabulary of 65,536: fast to draw)."""
    if not _vocab:
        v = random.Random(12345)
        _vocab.extend("".join(v.choices(_LETTERS, k=v.randint(2, 6))) for _ in range(65536))
    return " ".join(map(_vocab.__getitem__, array.array("H", rng.randbytes(2 * n))))


def chatml(messages: list[dict[str, str]]) -> list[str]:
    """The prompt as the server tokenizes it: ChatML, one token per word (a different scheme on purpose)."""
    out: list[str] = []
    for m in messages:
        out.append(f"<|im_start|>{m['role']}")
        out.extend(m["content"].split())
        out.append("<|im_end|>")
    out.append("<|im_start|>assistant")
    return out


def replica_blocks(tokens: list[str]) -> list[int]:
    out = []
    h = 0
    for i in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
        h = hash((h, *tokens[i : i + BLOCK]))
        out.append(h)
    return out


def make_request(messages: list[dict[str, str]], output: int, answer: str = "", **kw: Any) -> Request:
    toks = chatml(messages)
    body = orjson.dumps({"model": MODEL, "messages": messages, "temperature": 0.7})
    after = replica_blocks(toks + answer.split()) if answer else []
    return Request(body, replica_blocks(toks), len(toks), output, after=after, **kw)


# --- workloads ----------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    rate: float  # requests per second (open loop), or session starts per second (sessions)
    requests: list[Request] = field(default_factory=list)
    sessions: list[list[Request]] = field(default_factory=list)
    think: float = 0.0  # mean seconds between a session's answer and its next turn


def shared_prefix(rng: random.Random, n: int) -> Workload:
    groups = [words(rng, 1500) for _ in range(32)]
    reqs = []
    for _ in range(n):
        g = rng.randrange(len(groups))
        msgs = [{"role": "system", "content": groups[g]}, {"role": "user", "content": words(rng, rng.randint(50, 250))}]
        reqs.append(make_request(msgs, rng.randint(50, 150)))
    return Workload("shared-prefix groups", 21.0, reqs)


def multi_turn(rng: random.Random, n: int) -> Workload:
    systems = [words(rng, 60) for _ in range(4)]
    sessions = []
    count = 0
    while count < n:
        msgs = [{"role": "system", "content": rng.choice(systems)}]
        turns = []
        for t in range(rng.randint(3, 8)):
            msgs.append({"role": "user", "content": words(rng, rng.randint(50, 300))})
            out = rng.randint(60, 200)
            answer = words(rng, out)
            turns.append(make_request(list(msgs), out, answer, session=len(sessions), turn=t))
            msgs.append({"role": "assistant", "content": answer})
        sessions.append(turns)
        count += len(turns)
    return Workload("multi-turn sessions", 1.2, sessions=sessions, think=8.0)


def no_sharing(rng: random.Random, n: int) -> Workload:
    reqs = [
        make_request([{"role": "user", "content": words(rng, rng.randint(600, 1400))}], rng.randint(50, 150))
        for _ in range(n)
    ]
    return Workload("no sharing", 19.0, reqs)


def hot_prefix(rng: random.Random, n: int) -> Workload:
    hot = words(rng, 1000)
    reqs = []
    for _ in range(n):
        if rng.random() < 0.5:
            msgs = [{"role": "system", "content": hot}, {"role": "user", "content": words(rng, rng.randint(50, 250))}]
        else:
            msgs = [{"role": "user", "content": words(rng, rng.randint(600, 1400))}]
        reqs.append(make_request(msgs, rng.randint(50, 150)))
    return Workload("hot prefix (half the traffic)", 19.0, reqs)


WORKLOADS: dict[str, Callable[[random.Random, int], Workload]] = {
    "shared": shared_prefix,
    "multiturn": multi_turn,
    "nosharing": no_sharing,
    "hot": hot_prefix,
}


# --- strategies ---------------------------------------------------------------------------------


class Strategy:
    name = ""

    def __init__(self, p: Params, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self.inflight = [0] * p.replicas
        self.costs: list[int] = []  # nanoseconds spent choosing, per request (wall clock)

    def pick(self, req: Request) -> int:
        raise NotImplementedError

    def done(self, req: Request) -> None:
        pass


class RoundRobin(Strategy):
    name = "round robin"
    i = -1

    def pick(self, req: Request) -> int:
        self.i = (self.i + 1) % self.p.replicas
        return self.i


class LeastLoaded(Strategy):
    name = "least loaded"

    def pick(self, req: Request) -> int:
        lo = min(self.inflight)
        return self.rng.choice([i for i, x in enumerate(self.inflight) if x == lo])


class ConsistentHashBounded(Strategy):
    """Ring on the first 64 bytes of the body's prompt, bounded loads (c = 1.25), no cache state."""

    name = "consistent hash (bounded)"

    def __init__(self, p: Params, rng: random.Random) -> None:
        super().__init__(p, rng)
        pts = sorted((hash(("r", i, v)), i) for i in range(p.replicas) for v in range(64))
        self.points = [x for x, _ in pts]
        self.owners = [i for _, i in pts]

    def pick(self, req: Request) -> int:
        key = hash(req.blocks[0]) if req.blocks else hash(req.body)
        bound = math.ceil(1.25 * (sum(self.inflight) + 1) / self.p.replicas)
        start = bisect.bisect_left(self.points, key)
        for k in range(len(self.points)):
            i = self.owners[(start + k) % len(self.points)]
            if self.inflight[i] < bound:
                return i
        return self.inflight.index(min(self.inflight))


class Keyplane(Strategy):
    """keyplane's router, fed the request body as the proxy feeds it."""

    name = "keyplane (prefix affinity)"

    def __init__(self, p: Params, rng: random.Random) -> None:
        super().__init__(p, rng)
        self.router = PrefixRouter([(f"r{i}", p.cache_tokens) for i in range(p.replicas)], AffinityConfig())
        self.pool = self.router.pool([f"r{i}" for i in range(p.replicas)])
        self.reasons: dict[str, int] = {}

    def pick(self, req: Request) -> int:
        t0 = time.perf_counter_ns()
        d = self.router.route(self.pool, MODEL, req.body)
        self.costs.append(time.perf_counter_ns() - t0)
        req.handle = d
        self.reasons[d.reason] = self.reasons.get(d.reason, 0) + 1
        return d.replica

    def done(self, req: Request) -> None:
        req.handle.release()
        req.handle = None


STRATEGIES: tuple[type[Strategy], ...] = (RoundRobin, LeastLoaded, ConsistentHashBounded, Keyplane)


# --- the simulation -----------------------------------------------------------------------------


class Replica:
    def __init__(self, p: Params) -> None:
        self.free = p.slots
        self.queue: deque[Request] = deque()
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.capacity = p.cache_tokens // BLOCK
        self.inflight = 0
        self.area = 0.0  # integral of in-flight over time
        self.since = 0.0

    def account(self, now: float) -> None:
        self.area += self.inflight * (now - self.since)
        self.since = now

    def prefill(self, req: Request) -> int:
        """Cached tokens of ``req`` (its leading blocks present); the cache then holds all its blocks."""
        hit = 0
        for h in req.blocks:
            if h not in self.cache:
                break
            hit += 1
        self.hold(req.blocks)
        return hit * BLOCK

    def hold(self, blocks: list[int]) -> None:
        cache = self.cache
        for h in reversed(blocks):  # a chain is evicted from its end, as vLLM does
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
        while len(cache) > self.capacity:
            cache.popitem(last=False)


@dataclass
class Result:
    workload: str
    strategy: str
    hit_rate: float
    ttft_p50: float
    ttft_p99: float
    throughput: float
    load_ratio: float
    route_us: float
    reasons: dict[str, int]


def simulate(w: Workload, cls: type[Strategy], p: Params, seed: int) -> Result:
    rng = random.Random(seed)
    strat = cls(p, random.Random(seed + 1))
    reps = [Replica(p) for _ in range(p.replicas)]
    events: list[tuple[float, int, int, Any]] = []  # (time, seq, kind, payload)
    seq = 0
    ARRIVE, FINISH = 0, 1

    def push(t: float, kind: int, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    t = 0.0
    if w.sessions:
        for s in w.sessions:
            t += rng.expovariate(w.rate)
            push(t, ARRIVE, s[0])
    else:
        for r in w.requests:
            t += rng.expovariate(w.rate)
            push(t, ARRIVE, r)

    ttfts: list[float] = []
    prompt = cached = 0
    done = 0
    first = events[0][0]
    now = first

    def start(rep: Replica, req: Request, now: float) -> None:
        nonlocal prompt, cached
        rep.free -= 1
        req.cached = min(rep.prefill(req), req.tokens)
        prefill = p.a * (req.tokens - req.cached)
        ttfts.append(now - req.arrival + prefill)
        prompt += req.tokens
        cached += req.cached
        push(now + prefill + p.b * req.output, FINISH, req)

    while events:
        now, _, kind, req = heapq.heappop(events)
        if kind == ARRIVE:
            req.arrival = now
            i = strat.pick(req)
            req.replica = i
            rep = reps[i]
            rep.account(now)
            rep.inflight += 1
            strat.inflight[i] += 1
            if rep.free > 0:
                start(rep, req, now)
            else:
                rep.queue.append(req)
        else:
            rep = reps[req.replica]
            rep.account(now)
            rep.inflight -= 1
            strat.inflight[req.replica] -= 1
            strat.done(req)
            rep.hold(req.after)  # the generated answer's blocks are cached too (vLLM caches them)
            rep.free += 1
            done += 1
            if rep.queue:
                start(rep, rep.queue.popleft(), now)
            if req.session >= 0 and req.turn + 1 < len(w.sessions[req.session]):
                push(now + rng.expovariate(1 / w.think), ARRIVE, w.sessions[req.session][req.turn + 1])
    span = now - first
    for rep in reps:
        rep.account(now)
    loads = [rep.area / span for rep in reps]
    ttfts.sort()
    return Result(
        w.name,
        strat.name,
        cached / prompt if prompt else 0.0,
        _pct(ttfts, 0.50),
        _pct(ttfts, 0.99),
        done / span,
        max(loads) / (sum(loads) / len(loads)),
        _pct(sorted(strat.costs), 0.5) / 1000,
        getattr(strat, "reasons", {}),
    )


def _pct(xs: list[Any], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run(
    n: int = 3000, seed: int = 7, workloads: tuple[str, ...] = tuple(WORKLOADS), params: Params | None = None
) -> dict[str, dict[str, Result]]:
    p = params or Params()
    out: dict[str, dict[str, Result]] = {}
    for key in workloads:
        w = WORKLOADS[key](random.Random(seed), n)
        out[key] = {cls.name: simulate(w, cls, p, seed) for cls in STRATEGIES}
    return out


def floors(res: dict[str, dict[str, Result]]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    for key in ("shared", "multiturn"):
        if key in res:
            rr, kp = res[key][RoundRobin.name], res[key][Keyplane.name]
            checks.append(
                (
                    f"{kp.workload}: hit rate {kp.hit_rate:.1%} >= 3 x round robin's {rr.hit_rate:.1%}",
                    kp.hit_rate >= 3 * rr.hit_rate,
                )
            )
            checks.append(
                (
                    f"{kp.workload}: p99 TTFT {kp.ttft_p99:.3f}s < round robin's {rr.ttft_p99:.3f}s",
                    kp.ttft_p99 < rr.ttft_p99,
                )
            )
    if "nosharing" in res:
        ll, kp = res["nosharing"][LeastLoaded.name], res["nosharing"][Keyplane.name]
        checks.append(
            (
                f"no sharing: p99 TTFT {kp.ttft_p99:.3f}s within 5% of least loaded's {ll.ttft_p99:.3f}s",
                kp.ttft_p99 <= 1.05 * ll.ttft_p99,
            )
        )
        checks.append(
            (
                f"no sharing: throughput {kp.throughput:.2f}/s within 5% of least loaded's {ll.throughput:.2f}/s",
                kp.throughput >= 0.95 * ll.throughput,
            )
        )
    if "hot" in res:
        kp = res["hot"][Keyplane.name]
        checks.append((f"hot prefix: max/mean load {kp.load_ratio:.2f} <= 1.5", kp.load_ratio <= 1.5))
    return checks


def table(res: dict[str, dict[str, Result]]) -> str:
    rows = [
        "| workload | strategy | token hit rate | TTFT p50 (s) | TTFT p99 (s) | throughput (req/s) | "
        "max/mean load | routing cost (µs/req, median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for by in res.values():
        for r in by.values():
            cost = f"{r.route_us:.0f}" if r.route_us else "-"
            rows.append(
                f"| {r.workload} | {r.strategy} | {r.hit_rate:.1%} | {r.ttft_p50:.3f} | {r.ttft_p99:.3f} | "
                f"{r.throughput:.2f} | {r.load_ratio:.2f} | {cost} |"
            )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per workload")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    p = Params()
    res = run(args.requests, args.seed, tuple(args.workloads.split(",")), p)
    print(table(res))
    print()
    print(
        f"{p.replicas} replicas x {p.slots} slots, {p.cache_tokens} cached tokens each; TTFT = wait + {p.a} s x "
        f"uncached tokens; decode {p.b} s/token; {args.requests} requests per workload, seed {args.seed}; "
        f"{time.perf_counter() - t0:.1f} s"
    )
    kp_reasons = {k: by[Keyplane.name].reasons for k, by in res.items()}
    print("keyplane's decisions:", kp_reasons)
    ok = True
    for text, passed in floors(res):
        print(("PASS " if passed else "FAIL ") + text)
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
