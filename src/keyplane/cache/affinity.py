"""Prefix-affinity routing: send a prompt to the replica that most likely holds its prefix in cache.

The router keeps, per replica, an LRU of the prefix blocks it sent there (sized like the replica's
prompt cache, in tokens), and one index block hash -> replicas holding it (a bit mask). A request is
matched block by block; the choice, in order:

1. badly imbalanced in-flight loads (the busiest over ``balance_abs`` requests more than the idlest,
   and over ``balance_rel`` times it): the least-loaded replica;
2. the replica with the longest matching prefix, when the match is worth it (``min_match_tokens``)
   and the replica is within its bounded load: in-flight + 1 <= ceil(load_factor x (in-flight of the
   pool + 1) x its share of the weights);
3. otherwise consistent hashing with bounded loads on the first block: the first replica clockwise
   on a ring of virtual nodes that is within its bound. The ring and the hashes depend only on the
   names and the text, so several keyplane instances place a new prefix on the same replica.

The choice is recorded at once (the chosen replica's LRU takes the request's blocks; its in-flight
count goes up until ``Decision.release``), so concurrent requests with one prefix follow each other.
The simulation in bench/prefix_sim.py drives this same class.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from keyplane.cache import prefix as _prefix

AFFINITY: str = "affinity"  # longest matching prefix
HASH: str = "hash"  # consistent hashing with bounded loads
LEAST: str = "least_loaded"  # loads badly imbalanced


@dataclass(frozen=True, slots=True)
class AffinityConfig:
    block_chars: int = 64
    max_prefix_tokens: int = 2048
    min_match_tokens: int = 64
    load_factor: float = 1.25  # bound of a replica holding the prefix
    hash_load_factor: float = 1.0  # bound when placing a new prefix (or spilling a busy one)
    balance_abs: int = 16
    balance_rel: float = 2.0
    chars_per_token: int = 4
    vnodes: int = 64

    @property
    def max_chars(self) -> int:
        return self.max_prefix_tokens * self.chars_per_token

    @property
    def block_tokens(self) -> float:
        return self.block_chars / self.chars_per_token


class _Replica:
    __slots__ = ("bit", "capacity", "i", "inflight", "lru", "name", "used")

    def __init__(self, i: int, name: str, capacity_tokens: int) -> None:
        self.i = i
        self.bit = 1 << i
        self.name = name
        self.capacity = float(max(0, capacity_tokens))
        self.used = 0.0
        self.inflight = 0
        self.lru: OrderedDict[int, float] = OrderedDict()  # block hash -> tokens it stands for


@dataclass(frozen=True, slots=True)
class Pool:
    """The replicas one request may go to, with their weights (built once per model, reused)."""

    members: tuple[int, ...]
    weights: tuple[float, ...]
    mask: int
    total_weight: float


class Decision:
    """Where one request went. ``release()`` once it is over (idempotent; also on garbage collection)."""

    __slots__ = ("matched_tokens", "name", "prefix", "reason", "replica", "router")

    def __init__(
        self, router: PrefixRouter, replica: int, reason: str, matched_tokens: int, prefix: _prefix.Prefix
    ) -> None:
        self.router: PrefixRouter | None = router
        self.replica = replica
        self.name = router.replicas[replica].name
        self.reason = reason
        self.matched_tokens = matched_tokens
        self.prefix = prefix

    def served_by(self, name: str) -> None:
        """The request was answered by ``name`` (a fallback): that replica now holds the prefix too."""
        r = self.router
        if r is not None and name != self.name:
            i = r.by_name.get(name)
            if i is not None:
                r.record(i, self.prefix, r._depths(1 << i, self.prefix.hashes).get(i, 0))

    def release(self) -> None:
        r = self.router
        if r is not None:
            self.router = None
            r.replicas[self.replica].inflight -= 1

    def __del__(self) -> None:  # a request that ended without release (a bug elsewhere) must not pin load
        self.release()


class PrefixRouter:
    def __init__(self, replicas: Sequence[tuple[str, int]], config: AffinityConfig | None = None) -> None:
        """``replicas``: (name, prompt cache size in tokens) of every replica this router may pick."""
        self.config = config or AffinityConfig()
        if len(replicas) > 4096:
            raise ValueError("at most 4096 replicas")
        self.replicas = [_Replica(i, n, c) for i, (n, c) in enumerate(replicas)]
        self.by_name = {r.name: r.i for r in self.replicas}
        self.index: dict[int, int] = {}  # block hash -> bit mask of the replicas holding it
        points = sorted(
            (xxhash.xxh3_64_intdigest(f"{r.name}#{v}".encode()), r.i)
            for r in self.replicas
            for v in range(self.config.vnodes)
        )
        self._ring_points = [p for p, _ in points]
        self._ring_owner = [i for _, i in points]

    # --- pools ----------------------------------------------------------------------------------

    def pool(self, names: Sequence[str], weights: Sequence[float] | None = None) -> Pool:
        members = tuple(self.by_name[n] for n in names)
        w = tuple(float(x) for x in weights) if weights is not None else (1.0,) * len(members)
        mask = 0
        for i in members:
            mask |= 1 << i
        return Pool(members, w, mask, sum(w) or 1.0)

    # --- the choice -----------------------------------------------------------------------------

    def route(self, pool: Pool, model: str, body: bytes) -> Decision:
        """Parse ``body``'s prefix and choose (raises msgspec errors when it is not a prompt)."""
        cfg = self.config
        return self.choose(pool, _prefix.of_body(body, model, cfg.max_chars, cfg.block_chars))

    def choose(self, pool: Pool, p: _prefix.Prefix) -> Decision:
        cfg = self.config
        reps = self.replicas
        members = pool.members
        loads = [reps[i].inflight for i in members]
        depths = self._depths(pool.mask, p.hashes)
        lo = min(loads)
        hi = max(loads)
        if hi - lo > cfg.balance_abs and hi > cfg.balance_rel * lo:
            return self._take(members[loads.index(lo)], LEAST, depths, p)
        share = (sum(loads) + 1) / pool.total_weight
        weights = pool.weights
        # Longest match first, among the replicas within their bound.
        if depths:
            min_blocks = cfg.min_match_tokens / cfg.block_tokens
            scale = cfg.load_factor * share
            for i, d in sorted(depths.items(), key=lambda t: (-t[1], reps[t[0]].inflight)):
                if d < min_blocks:
                    break
                if reps[i].inflight < math.ceil(scale * weights[members.index(i)]):
                    return self._take(i, AFFINITY, depths, p)
        # A new prefix (or its holders are busy): consistent hashing with bounded loads.
        pts = self._ring_points
        owners = self._ring_owner
        n = len(pts)
        start = bisect.bisect_left(pts, p.ring_key)
        mask = pool.mask
        scale = cfg.hash_load_factor * share
        for k in range(n):
            i = owners[(start + k) % n]
            if (mask >> i) & 1 and reps[i].inflight < math.ceil(scale * weights[members.index(i)]):
                return self._take(i, HASH, depths, p)
        return self._take(members[loads.index(lo)], LEAST, depths, p)  # unreachable while load_factor >= 1

    def _depths(self, mask: int, hashes: list[int]) -> dict[int, int]:
        """Replica -> number of leading blocks of ``hashes`` it holds, for the replicas of ``mask`` holding any.

        A replica holds a chain from its start (blocks are evicted from a chain's end), so the holders
        of block i are a subset of those of block i-1: each change is found by bisection, in
        O(log n) look-ups rather than n.
        """
        out: dict[int, int] = {}
        if not hashes:
            return out
        get = self.index.get
        alive = get(hashes[0], 0) & mask
        lo, n = 0, len(hashes)
        while alive:
            if get(hashes[n - 1], 0) & alive == alive:
                for i in _bits(alive):
                    out[i] = n
                break
            hi = n - 1  # hashes[hi] is not held by all of alive; find the first such block after lo
            while lo + 1 < hi:
                mid = (lo + hi) // 2
                if get(hashes[mid], 0) & alive == alive:
                    lo = mid
                else:
                    hi = mid
            left = get(hashes[hi], 0) & alive
            for i in _bits(alive & ~left):
                out[i] = hi
            alive, lo = left, hi
        return out

    def _take(self, i: int, reason: str, depths: dict[int, int], p: _prefix.Prefix) -> Decision:
        self.replicas[i].inflight += 1
        d = depths.get(i, 0)
        self.record(i, p, d)
        return Decision(self, i, reason, int(d * self.config.block_tokens), p)

    # --- the per-replica LRUs -------------------------------------------------------------------

    def record(self, i: int, p: _prefix.Prefix, held: int = 0) -> None:
        """Replica ``i`` now holds ``p``'s blocks, the first ``held`` of which it held already.

        Blocks are touched last to first, so a chain is evicted from its end, as vLLM does; the last
        block also stands for the part of the prompt past the hashed prefix (``tail``), so long
        prompts take their real room in the LRU.
        """
        r = self.replicas[i]
        hashes = p.hashes
        if not hashes or r.capacity <= 0:
            return
        cfg = self.config
        bt = cfg.block_tokens
        lru = r.lru
        index = self.index
        bit = r.bit
        used = r.used
        for h in reversed(hashes[held:]):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = bt
                used += bt
                index[h] = index.get(h, 0) | bit
        if held:
            deque(map(lru.move_to_end, reversed(hashes[:held])), maxlen=0)  # at C speed
        last = hashes[-1]
        w = bt + max(0.0, (p.total_chars - len(hashes) * cfg.block_chars) / cfg.chars_per_token)
        old = lru[last]
        if old != w:
            lru[last] = w
            used += w - old
        while used > r.capacity and lru:
            h, w = lru.popitem(last=False)
            used -= w
            m = index.get(h, 0) & ~bit
            if m:
                index[h] = m
            else:
                index.pop(h, None)
        r.used = used

    def forget(self, name: str) -> None:
        """Drop everything recorded for ``name`` (its cache was lost: a restart)."""
        i = self.by_name.get(name)
        if i is None:
            return
        r = self.replicas[i]
        for h in r.lru:
            m = self.index.get(h, 0) & ~r.bit
            if m:
                self.index[h] = m
            else:
                self.index.pop(h, None)
        r.lru.clear()
        r.used = 0.0

    def inflight(self, name: str) -> int:
        return self.replicas[self.by_name[name]].inflight


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out
