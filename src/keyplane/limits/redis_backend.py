"""The fleet limiter: budgets, reservations and GCRA buckets in Redis, one Lua script per step.

Every instance runs the same scripts against the same keys, with Redis TIME as the clock, so N
instances enforce exactly what one would (DESIGN.md "Single node and fleet"). Admission is one
EVALSHA: it purges expired reservations, checks every bucket and budget, and takes from all of them
or from none. Settle is one more.

Keys, all under one hash tag so that a Redis Cluster keeps them in one slot:

    {prefix}:epoch           "<E>:<R>": Redis TIME (µs) when the budget counters were rebuilt from SQL; R
                             is E when that rebuild followed a loss of Redis's data (else 0)
    {prefix}:b:<budget>      hash: spent, reserved (micro-dollars); base (seeded from SQL)
    {prefix}:z:<budget>      sorted set of live reservations: member "<rid>:<amount>", score expiry (µs)
    {prefix}:g:<bucket>      hash: rm, tm, rd, td (GCRA TAT per limit, µs)

A reservation whose process died is dropped by the next admission on that budget once its score
(expiry) is past; the process running a request renews its reservation while it runs
(:meth:`RedisLimiter.renew`). When Redis loses its data the ``epoch`` key goes with it, admission
answers :class:`Unseeded` (the caller refuses with 503 until it rebuilt the counters from SQL and the
journal: :meth:`RedisLimiter.seed`). For REBUILD_GRACE_US after a rebuild that followed a loss, admission against
a limit answers :class:`Rebuilding` while every instance holds its running requests' reservations again (they
were lost with the rest). After such a loss (R > 0) a GCRA bucket Redis no longer holds
starts as if it had been used up at the rebuild: its minute limits refill over the minute after R,
its day limits start half used. Conservative: a loss never hands out a fresh bucket.

Faults (docs/operations.md "Money across faults"): connections are health-checked and a command that
fails on a broken connection is retried once on a new one; a settle that still fails is kept in a
bounded queue and replayed when Redis answers (:meth:`RedisLimiter.retry_pending`), and a failed or
timed-out admission's reservation is released the same way. A replayed release is *strict*: it acts only
while the reservation is still in Redis. A replayed settle adds its cost even when its reservation lapsed
meanwhile (the money was spent), except after a rebuild that followed it, which counted the cost from SQL and
the journal instead.

The scripts themselves are limits/redis_scripts.py.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Collection
from typing import Any

import hiredis  # a dependency of keyplane's (redis-py's C reply parser and command packer)
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keyplane.limits import Bucket, BudgetRef, Denied, Granted, Rebuilding, Reservation, Unseeded
from keyplane.limits.redis_scripts import ADMIT, RENEW, SEED, SETTLE, TOP_UP

log = logging.getLogger("keyplane.limits")
# A queued settle is dropped at its replay only when the counters were rebuilt at least this long after it was
# queued (instances' clocks and Redis's differ a little; within it the cost is added: an over-count at worst).
REBUILT_AFTER_US = 1_000_000

MAX_CONNECTIONS = 64
RENEW_BATCH = 2_000  # reservations renewed per script call (a script blocks Redis while it runs)
PENDING_MAX = 100_000  # settles and releases waiting for Redis to come back (oldest dropped beyond)
HEALTH_CHECK_SECONDS = 1.0  # a pooled connection idle longer than this is PINGed before use
# What an unreachable, slow or restarting Redis raises.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


# The argument types hiredis packs to the bytes redis-py's encoder gives (UTF-8 text, bytes as they are, an integer's
# digits); exactly these types, not their subclasses (a bool is refused by redis-py, an IntEnum written by name).
_PLAIN = frozenset({str, bytes, int})


class _PackedByHiredis:
    """A connection whose commands are packed by hiredis in one call. redis-py's own hiredis packer runs each
    argument through its Python encoder first (about 0.4 us an argument: 15 us for the admission script's ~30
    keys and limits, a tenth of an instance's CPU per request on a fleet, bench/profile_keyplane.py --fleet).
    A command whose name is one word of letters and digits and whose arguments are all str, bytes or int is
    packed by hiredis, to the same bytes; any other (a name with a space, like ``SCRIPT LOAD``, that redis-py
    splits; a float, which it writes with ``repr``; a bool it refuses; a memoryview) is redis-py's to pack, as
    it always was (tests/limits/test_redis_packing.py compares the two)."""

    def pack_command(self, *args: Any) -> Any:
        if args and _PLAIN.issuperset(map(type, args)) and type(args[0]) is not int and args[0].isalnum():
            return [hiredis.pack_command(args)]
        return super().pack_command(*args)  # type: ignore[misc]


_packed_classes: dict[type, type] = {}


def packed_by_hiredis(cls: type) -> type:
    """``cls`` (a redis-py connection class: TCP, TLS or Unix socket) with :class:`_PackedByHiredis`'s packing."""
    packed = _packed_classes.get(cls)
    if packed is None:
        packed = _packed_classes[cls] = type(f"PackedByHiredis{cls.__name__}", (_PackedByHiredis, cls), {})
    return packed


class RedisLimiter:
    def __init__(self, url: str, prefix: str, reservation_ttl: float, timeout: float = 1.0) -> None:
        # A bounded pool that waits for a free connection rather than failing under a burst. Commands
        # and connects time out (``timeout``: the redis_timeout_seconds setting); a connection idle
        # for a second is PINGed before use (a Redis restart leaves the pool full of dead sockets),
        # and a command that fails on a broken connection is retried once, on a new one.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=max(timeout, 1.0) * 2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=HEALTH_CHECK_SECONDS,
            retry=Retry(
                ExponentialBackoff(cap=0.1, base=0.01), 1, supported_errors=(RedisConnectionError, ConnectionError)
            ),
            retry_on_error=[RedisConnectionError, ConnectionError],
        )
        pool.connection_class = packed_by_hiredis(pool.connection_class)  # the URL's kind: before any connection
        self.redis: Any = aioredis.Redis(connection_pool=pool, decode_responses=False)
        self.base = "{" + prefix + "}"
        self.seeded_key = self.base + ":epoch"
        self.ttl_us = int(reservation_ttl * 1_000_000)
        self.timeout = timeout
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)
        self._seed = self.redis.register_script(SEED)
        self._top_up = self.redis.register_script(TOP_UP)
        self._renew = self.redis.register_script(RENEW)
        # (reservation, actual cost, actual tokens, when queued: unix us) of settles (and releases: cost -1) Redis
        # did not take
        self.pending: collections.deque[tuple[Reservation, int, int, int]] = collections.deque(maxlen=PENDING_MAX)
        self.dropped = 0  # pending settles pushed out of the full queue

    def _b(self, key: str) -> str:
        return f"{self.base}:b:{key}"

    def _z(self, key: str) -> str:
        return f"{self.base}:z:{key}"

    def _g(self, key: str) -> str:
        return f"{self.base}:g:{key}"

    async def admit(
        self,
        rid: str,
        budgets: tuple[BudgetRef, ...],
        buckets: tuple[Bucket, ...],
        cost: int,
        tokens: int,
        ttl_us: int | None = None,
    ) -> Granted | Denied:
        keys = [self.seeded_key]
        keys.extend(self._b(b.key) for b in budgets)
        keys.extend(self._z(b.key) for b in budgets)
        keys.extend(self._g(g.key) for g in buckets)
        args: list[Any] = [f"{rid}:{cost}", ttl_us or self.ttl_us, cost, tokens, len(budgets), len(buckets)]
        for b in budgets:
            args.append(-1 if b.limit is None else b.limit)
            args.append(b.ttl)
        for g in buckets:
            args.extend(g.limits)
        r = await self._admit(keys=keys, args=args)
        code = int(r[0])
        if code == 1:
            v = [int(x) for x in r[2:]]
            return Granted(int(r[1]), [(v[i], v[i + 1], v[i + 2], v[i + 3]) for i in range(0, len(v), 4)])
        if code == -1:
            raise Unseeded()
        if code == -2:
            raise Rebuilding()
        kind = int(r[1])
        if kind == 1:
            return Denied("budget", int(r[2]) - 1, spent=int(r[3]), reserved=int(r[4]))
        if kind == 3:
            return Denied("too_large", int(r[2]) - 1, int(r[3]) - 1, used=int(r[4]))
        return Denied("rate", int(r[2]) - 1, int(r[3]) - 1, used=int(r[4]), wait_us=int(r[5]))

    async def hold(self, res: Reservation, ttl_us: int) -> bool:
        """Hold ``res.amount`` on every budget of ``res`` for ``ttl_us``, whatever their limits (a reservation
        taken before, restored: a running batch's after the counters were rebuilt), unless it is held already
        (the admission script's own check: the same member on the first budget). Raises Unseeded."""
        if res.amount <= 0 or ttl_us <= 0 or not res.budgets:
            return False
        held = await self.redis.zscore(self._z(res.budgets[0].key), f"{res.rid}:{res.amount}")
        if held is not None:
            return False
        free = tuple(BudgetRef(b.key, None, b.ttl) for b in res.budgets)
        return isinstance(await self.admit(res.rid, free, (), res.amount, 0, ttl_us), Granted)

    async def renew(self, reservations: Collection[Reservation], ttl_us: int) -> int:
        """Extend the reservations still held to Redis TIME + ``ttl_us``: one EVALSHA per RENEW_BATCH of them."""
        n = 0
        keys: list[str] = []
        args: list[Any] = [ttl_us]
        for res in reservations:
            if res.amount <= 0 or not res.budgets:
                continue  # nothing reserved, nothing to hold
            keys.extend(self._z(b.key) for b in res.budgets)
            args.extend((f"{res.rid}:{res.amount}", len(res.budgets)))
            if len(args) > 2 * RENEW_BATCH:
                n += int(await self._renew(keys=keys, args=args))
                keys, args = [], [ttl_us]
        if len(args) > 1:
            n += int(await self._renew(keys=keys, args=args))
        return n

    async def settle(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        """Commit a request's cost. When Redis cannot take it the settle is queued (strict) for
        :meth:`retry_pending`, and the error raised for the caller to log."""
        try:
            await self._run_settle(res, actual_cost, actual_tokens - res.tokens, strict=False)
        except STORE_ERRORS:
            self._queue(res, actual_cost, actual_tokens)
            raise

    async def release(self, res: Reservation) -> None:
        """Undo an admission that failed or timed out on the client side (idempotent: strict). Queued when
        Redis does not answer; the reservation's TTL remains the last resort."""
        if not res.amount:
            return
        try:
            await self._run_settle(res, 0, 0, strict=True)
        except STORE_ERRORS:
            self._queue(res, -1, 0)

    def _queue(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        if not res.amount and actual_cost <= 0:
            return  # nothing reserved and nothing spent: nothing to replay
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
        self.pending.append((res, actual_cost, actual_tokens, int(time.time() * 1_000_000)))

    async def retry_pending(self) -> int:
        """Replay queued settles and releases, oldest first, until Redis fails again; returns how many.

        A release is strict (it undoes only a reservation still held). A settle adds its cost whether or not its
        reservation is still held: the reservation may have lapsed at its TTL while this instance could not renew
        it, and the money was spent all the same (red team round 19). Unless the counters were rebuilt after it
        was queued (a loss): the rebuild counted it from the journal, where the request's record went right after
        its settle. A settle Redis ran but whose answer was lost is counted twice: an over-count, never less."""
        done = 0
        ep = await self.epoch() if self.pending else None
        rebuilt = ep[1] if ep is not None else 0  # R: when the counters were last rebuilt after a loss (Redis us)
        while self.pending:
            res, cost, tokens, queued = self.pending[0]
            if cost < 0:
                await self._run_settle(res, 0, 0, strict=True)
            elif rebuilt <= queued + REBUILT_AFTER_US:  # (a clock apart from Redis's: a rebuild within 1 s re-adds)
                await self._run_settle(res, cost, tokens - res.tokens, strict=False)
            self.pending.popleft()
            done += 1
        return done

    async def _run_settle(self, res: Reservation, actual_cost: int, delta: int, strict: bool) -> int:
        keys = [self._b(b.key) for b in res.budgets]
        keys.extend(self._z(b.key) for b in res.budgets)
        keys.extend(self._g(g.key) for g in res.buckets)
        args: list[Any] = [
            f"{res.rid}:{res.amount}",
            res.amount,
            actual_cost,
            delta,
            len(res.budgets),
            len(res.buckets),
            1 if strict else 0,
        ]
        args.extend(b.ttl for b in res.budgets)
        for g in res.buckets:
            args.extend((g.limits[1], g.limits[3]))
        return int(await self._settle(keys=keys, args=args))

    async def is_seeded(self) -> bool:
        return bool(await self.redis.exists(self.seeded_key))

    def forget_before(self, period_prefixes: set[str]) -> None:
        return None  # past months' counters expire in Redis (their TTL)

    def pending_settles(self) -> int:
        return len(self.pending)

    def synchronous(self) -> None:
        return None  # every admission is a round trip to Redis

    def ping_client(self) -> Any:
        return self.redis

    async def epoch(self) -> tuple[int, int] | None:
        """(E, R) of the current counters (see the module doc), None when Redis lost them."""
        v = await self.redis.get(self.seeded_key)
        if v is None:
            return None
        e, _, r = v.decode().partition(":")
        return int(e), int(r or 0)

    async def seed(self, spent: dict[str, int], ttls: dict[str, int], after_loss: bool = False) -> None:
        items = list(spent.items())
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            args: list[Any] = []
            for key, value in chunk:
                args.extend((value, ttls.get(key, 0)))
            await self._seed(keys=[self._b(k) for k, _ in chunk], args=args)
        sec, us = await self.redis.time()
        now = int(sec) * 1_000_000 + int(us)
        await self.redis.set(self.seeded_key, f"{now}:{now if after_loss else 0}".encode(), nx=True)

    async def top_up(self, marker: str, spent: dict[str, int]) -> bool:
        """Add ``spent`` to the counters once per ``marker`` (an instance's journal after a rebuild)."""
        keys = [f"{self.base}:t:{marker}"] + [self._b(k) for k in spent]
        return bool(await self._top_up(keys=keys, args=[86_400, *spent.values()]))

    async def spent(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(self._b(k), "spent", "reserved")
            rows = await pipe.execute()
        return {k: (int(r[0] or 0), int(r[1] or 0)) for k, r in zip(keys, rows, strict=True)}

    async def sweep(self) -> int:
        return 0  # expired reservations are dropped by the admission script itself

    async def delete_all(self) -> None:
        """Remove every key under the prefix (tests)."""
        async for key in self.redis.scan_iter(match=self.base + ":*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
