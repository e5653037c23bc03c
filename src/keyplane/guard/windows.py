"""Bucketed sliding windows of each key's (or project's) usage: in memory, or in Redis for a fleet.

A series is one entity (``k:<key id>`` or ``p:<project id>``) over one window length W. It keeps:

- fine buckets of W/60 seconds for the last W: their sum is the live, sliding value of the window;
- the totals of the aligned periods ``[n*W, (n+1)*W)`` for as many periods as the rules' baselines
  need: the detectors' baseline is made of the complete ones.

Counters are integers: ``t`` tokens, ``c`` cost in micro-dollars, ``r`` requests, ``e<status>`` 4xx
answers. The observe step only appends each request to a list (:meth:`MemoryWindows.observe`); :meth:`fold` adds
what is listed to the series (:meth:`record`) before anything reads them (the evaluator's flush, a view, the sweep):
no I/O on the request path, and a run of one key's requests that fall in the same bucket of every series is added
once, however long it is. With Redis,
records accumulate locally and :meth:`RedisWindows.flush` (background task) adds them to one Redis
hash per series in one pipeline, so the traffic a key sends through several instances is summed
whole; the evaluator then reads the series back from Redis. Times come from the injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

BUCKETS = 60
MAX_ORIGINS = 5000  # per key; past it the oldest half is forgotten (they would look new again)
# Requests observed and not yet folded into the series: folded on the request path past this many (the evaluator
# folds them at each pass, every 50 ms under load; this bounds the memory of a stalled one).
MAX_PENDING = 20_000

Counters = dict[str, int]
# One observed request: key id, project id (or None), when, tokens, cost (micro-dollars), the 4xx status that
# counts as an error (0: none), client IP and user agent (None: unknown).
Observation = tuple[str, str | None, float, int, int, int, str | None, str | None]


@dataclass(slots=True)
class View:
    """What the detectors see of one series at one moment."""

    current: Counters  # sums over the sliding window
    periods: list[Counters]  # complete periods before the current one, oldest first, since first seen
    first_seen: float | None


@dataclass(slots=True)
class _Series:
    window: float
    width: float
    first_seen: float
    buckets: dict[int, Counters] = field(default_factory=dict)
    # Period totals of the buckets that slid out of the window (folded in by _prune, off the hot path).
    periods: dict[int, Counters] = field(default_factory=dict)
    total: Counters = field(default_factory=dict)  # the sum of ``buckets``, kept as they come and go
    first_sent: bool = False  # Redis: first_seen written


def _add(target: Counters, sample: Counters) -> None:
    for k, v in sample.items():
        target[k] = target.get(k, 0) + v


def build_view(
    buckets: dict[int, Counters],
    periods: dict[int, Counters],
    first_seen: float | None,
    window: float,
    n_periods: int,
    now: float,
    current: Counters | None = None,
    periods_complete: bool = False,
) -> View:
    """The window's sum and the complete periods; buckets still in the window count in their period too."""
    b_now = int(now // (window / BUCKETS))
    p_now = b_now // BUCKETS
    live: dict[int, Counters] = {}
    sums: Counters = {}
    for b, c in buckets.items():
        if current is None and b_now - BUCKETS < b <= b_now:
            _add(sums, c)
        if not periods_complete and b // BUCKETS < p_now:
            _add(live.setdefault(b // BUCKETS, {}), c)
    hist: list[Counters] = []
    if first_seen is not None:
        first_complete = math.ceil(first_seen / window)  # the first period that starts after first use
        for p in range(max(p_now - n_periods, first_complete), p_now):
            folded = periods.get(p, {})
            if p in live:
                folded = dict(folded)
                _add(folded, live[p])
            hist.append(folded)
    return View(sums if current is None else current, hist, first_seen)


class MemoryWindows:
    """One node: every series in this process."""

    shared = False

    def __init__(self) -> None:
        self._series: dict[tuple[str, float], _Series] = {}
        self._origins: dict[str, dict[str, float]] = {}
        self._origins_first: dict[str, float] = {}
        self._cooldowns: dict[str, float] = {}
        self.retention: dict[float, int] = {}  # window -> periods kept (the largest baseline)
        # What an observed request is added to, set with the rules (guard/engine.py): the (scope, window) series,
        # scope "key" or "project", and whether its origins are kept (a new_origins rule is active).
        self.plan: tuple[tuple[str, float], ...] = ()
        self.track_origins = False
        self.pending: list[Observation] = []
        self.touched: set[str] = set()  # entities folded since the evaluator last took them (take_touched)

    # --- the observe step (no I/O) ---------------------------------------------------------------

    def observe(self, obs: Observation) -> bool:
        """List one request for :meth:`fold`; True when it is the first listed since the last fold (the caller
        wakes the evaluator)."""
        pending = self.pending
        pending.append(obs)
        if len(pending) >= MAX_PENDING:
            self.fold()
            return False
        return len(pending) == 1

    def fold(self) -> None:
        """Add the listed requests to their series. A run of requests of one key and project whose times fall in
        the same bucket of every series is added at once (its sums in one :meth:`record` per series, with the first
        request's time): the same counters as one record per request and series, ``r`` 1, ``t`` and ``c`` when not
        0, ``e<status>`` 1. A key sending many requests makes few runs; requests of many keys interleaved, one run
        each."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        widths = [window / BUCKETS for _, window in self.plan]
        origins = self.track_origins
        run: list[Any] | None = None  # [key id, project id, first time, r, t, c, {status: n} | None]
        lo = hi = 0.0  # the times whose buckets are the run's in every series (worked out once a run goes on)
        for kid, pid, now, tokens, cost, err, ip, ua in pending:
            if run is not None and kid == run[0] and pid == run[1]:
                if lo == hi:
                    # Where every series' bucket of the run's time starts and ends, a microsecond inside (a time that
                    # close to an edge starts a run of its own: its buckets are computed, never assumed).
                    lo, hi = -math.inf, math.inf
                    for width in widths:
                        b = run[2] // width
                        if b * width > lo:
                            lo = b * width
                        if (b + 1) * width < hi:
                            hi = (b + 1) * width
                    lo, hi = lo + 1e-6, hi - 1e-6
                if lo <= now < hi:
                    run[3] += 1
                    run[4] += tokens
                    run[5] += cost
                    if err:
                        errs = run[6]
                        if errs is None:
                            errs = run[6] = {}
                        errs[err] = errs.get(err, 0) + 1
                    if origins:
                        self._origins_of(kid, ip, ua, now)
                    continue
            if run is not None:
                self._add_run(run)
            run = [kid, pid, now, 1, tokens, cost, {err: 1} if err else None]
            lo = hi = 0.0
            if origins:
                self._origins_of(kid, ip, ua, now)
        if run is not None:
            self._add_run(run)

    def _origins_of(self, kid: str, ip: str | None, ua: str | None, now: float) -> None:
        kent = "k:" + kid
        if ip:
            self.record_origin(kent, "i:" + ip, now)
        if ua:
            self.record_origin(kent, "u:" + ua[:200], now)

    def _add_run(self, run: list[Any]) -> None:
        kid, pid, now, r, t, c, errs = run
        sample = {"r": r}
        if t:
            sample["t"] = t
        if c:
            sample["c"] = c
        if errs:
            for status, n in errs.items():
                sample[f"e{status}"] = n
        kent = "k:" + kid
        pent = "p:" + pid if pid else None
        self.touched.add(kent)
        for scope, window in self.plan:
            if scope == "key":
                self.record(kent, window, now, sample)
            elif pent is not None:
                self.record(pent, window, now, sample)
                self.touched.add(pent)

    def take_touched(self) -> set[str]:
        """The keys (``k:``) and projects (``p:``, when a project rule is active) of the requests folded since the
        last call: what the evaluator looks at."""
        self.fold()
        touched, self.touched = self.touched, set()
        return touched

    def record(self, entity: str, window: float, now: float, sample: Counters) -> None:
        key = (entity, window)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(window, window / BUCKETS, now)
        b = int(now // s.width)
        bucket = s.buckets.get(b)
        if bucket is None:
            bucket = s.buckets[b] = {}
        total = s.total
        for k, v in sample.items():
            bucket[k] = bucket.get(k, 0) + v
            total[k] = total.get(k, 0) + v

    def record_origin(self, entity: str, origin: str, now: float) -> None:
        known = self._origins.get(entity)
        if known is None:
            known = self._origins[entity] = {}
            self._origins_first[entity] = now
        if origin not in known:
            known[origin] = now
            if len(known) > MAX_ORIGINS:
                keep = sorted(known.items(), key=lambda kv: kv[1])[len(known) // 2 :]
                self._origins[entity] = dict(keep)

    # --- the evaluator (background) --------------------------------------------------------------

    async def flush(self, now: float | None = None) -> None:
        self.fold()

    async def view(self, entity: str, window: float, now: float) -> View:
        self.fold()
        s = self._series.get((entity, window))
        if s is None:
            return View({}, [], None)
        self._prune(s, now)
        current = {k: v for k, v in s.total.items() if v}
        return build_view(s.buckets, s.periods, s.first_seen, window, self.retention.get(window, 1), now, current)

    async def views(self, wanted: list[tuple[str, float]], now: float) -> dict[tuple[str, float], View]:
        return {(e, w): await self.view(e, w, now) for e, w in wanted}

    def _prune(self, s: _Series, now: float) -> None:
        b_min = int(now // s.width) - BUCKETS
        if len(s.buckets) > BUCKETS or min(s.buckets, default=b_min + 1) <= b_min:
            total = s.total
            for b in sorted(b for b in s.buckets if b <= b_min):
                c = s.buckets.pop(b)
                _add(s.periods.setdefault(b // BUCKETS, {}), c)
                for k, v in c.items():
                    total[k] -= v
        p_min = int(now // s.width) // BUCKETS - self.retention.get(s.window, 1) - 1
        for p in [p for p in s.periods if p < p_min]:
            del s.periods[p]

    async def new_origins(self, entity: str, since: float) -> tuple[int, int, float | None]:
        """(new client IPs, new user agents) first seen at or after ``since``, and when the key was first seen."""
        self.fold()
        known = self._origins.get(entity) or {}
        ips = sum(1 for o, t in known.items() if t >= since and o.startswith("i:"))
        uas = sum(1 for o, t in known.items() if t >= since and o.startswith("u:"))
        return ips, uas, self._origins_first.get(entity)

    async def claim(self, name: str, now: float, cooldown: float) -> bool:
        """True when ``name`` (rule + entity) has not fired within ``cooldown``; marks it fired now."""
        last = self._cooldowns.get(name)
        if last is not None and now - last < cooldown:
            return False
        self._cooldowns[name] = now
        return True

    async def release(self, name: str) -> None:
        """Undo a claim whose action failed, so that the rule may fire again at once."""
        self._cooldowns.pop(name, None)

    async def sweep(self, now: float) -> None:
        """Forget series with no traffic for longer than their retention (memory stays bounded)."""
        self.fold()
        for key, s in list(self._series.items()):
            keep = (self.retention.get(s.window, 1) + 2) * s.window
            newest = max([*s.periods, *(b // BUCKETS for b in s.buckets)], default=-1)
            if (newest + 1) * s.window < now - keep:
                del self._series[key]
        horizon = max([(n + 2) * w for w, n in self.retention.items()], default=86400.0)
        self._cooldowns = {k: t for k, t in self._cooldowns.items() if now - t < 31 * 86400}
        for entity, known in list(self._origins.items()):
            if known and max(known.values()) < now - max(horizon, 30 * 86400):
                del self._origins[entity]
                self._origins_first.pop(entity, None)

    async def aclose(self) -> None:
        return None


_CLAIM = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(ARGV[1]) - tonumber(last) < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


_ADD = """
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisWindows(MemoryWindows):
    """A fleet: the local series hold only what this instance recorded since its last flush."""

    shared = True

    def __init__(self, redis: Any, prefix: str) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix
        self._pending_origins: dict[str, dict[str, float]] = {}
        self._claim = redis.register_script(_CLAIM)
        self._add_many = redis.register_script(_ADD)

    def _skey(self, entity: str, window: float) -> str:
        return f"{self.prefix}:s:{entity}:{int(window)}"

    def record_origin(self, entity: str, origin: str, now: float) -> None:
        pend = self._pending_origins.get(entity)
        if pend is None:
            pend = self._pending_origins[entity] = {}
        pend.setdefault(origin, now)

    async def flush(self, now: float | None = None) -> None:
        self.fold()
        batch: list[tuple[tuple[str, float], float | None, dict[int, Counters], dict[int, Counters]]] = []
        for key, s in list(self._series.items()):
            if now is not None:  # what no view can use any more is not worth sending
                self._prune(s, now)
            if not s.buckets and not s.periods:
                del self._series[key]  # idle since the last flush
                continue
            batch.append((key, None if s.first_sent else s.first_seen, s.buckets, s.periods))
            s.first_sent = True
            s.buckets, s.periods, s.total = {}, {}, {}  # the series object stays: no allocation per record
        origins, self._pending_origins = self._pending_origins, {}
        if not batch and not origins:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (entity, window), first, buckets, periods in batch:
            k = self._skey(entity, window)
            args: list[Any] = [int((self.retention.get(window, 1) + 2) * window) + 60]
            for b, c in buckets.items():
                for f, v in c.items():
                    args += (f"b{b}:{f}", v, f"p{b // BUCKETS}:{f}", v)
            for p, c in periods.items():  # buckets already out of the window: their periods only
                for f, v in c.items():
                    args += (f"p{p}:{f}", v)
            await self._add_many(keys=[k], args=args, client=pipe)  # one command per series (queued)
            if first is not None:  # the first instance to flush a new series sets it (within a flush interval)
                pipe.hsetnx(k, "first", repr(first))
        for entity, known in origins.items():
            k = f"{self.prefix}:o:{entity}"
            pipe.zadd(k, known, nx=True)
            pipe.zremrangebyrank(k, 0, -MAX_ORIGINS - 1)
            pipe.expire(k, 90 * 86400)
            fk = f"{self.prefix}:of:{entity}"
            pipe.set(fk, repr(min(known.values())), nx=True, ex=90 * 86400)
        try:
            await pipe.execute()
        except Exception:
            # Put the deltas back so that a Redis blip loses nothing; the next flush retries.
            for key, first, buckets, periods in batch:
                back = self._series.get(key)
                if back is None:
                    back = self._series[key] = _Series(key[1], key[1] / BUCKETS, first or now or 0.0)
                if first is not None:
                    s.first_sent = False
                for b, c in buckets.items():
                    _add(s.buckets.setdefault(b, {}), c)
                    _add(s.total, c)
                for p, c in periods.items():
                    _add(s.periods.setdefault(p, {}), c)
            for entity, known in origins.items():
                for o, t in known.items():
                    self._pending_origins.setdefault(entity, {}).setdefault(o, t)
            raise

    async def view(self, entity: str, window: float, now: float) -> View:
        return (await self.views([(entity, window)], now))[(entity, window)]

    async def views(self, wanted: list[tuple[str, float]], now: float) -> dict[tuple[str, float], View]:
        """Many series in one round trip (the evaluator asks for every dirty key at once)."""
        pipe = self.redis.pipeline(transaction=False)
        for entity, window in wanted:
            pipe.hgetall(self._skey(entity, window))
        raws = await pipe.execute()
        out: dict[tuple[str, float], View] = {}
        cleanup = self.redis.pipeline(transaction=False)
        dirty = False
        for (entity, window), raw in zip(wanted, raws, strict=True):
            view, stale = self._parse(raw, window, now)
            out[(entity, window)] = view
            if stale:
                cleanup.hdel(self._skey(entity, window), *stale)
                dirty = True
        if dirty:
            await cleanup.execute()
        return out

    def _parse(self, raw: dict[Any, Any], window: float, now: float) -> tuple[View, list[Any]]:
        buckets: dict[int, Counters] = {}
        periods: dict[int, Counters] = {}
        first: float | None = None
        b_min = int(now // (window / BUCKETS)) - BUCKETS
        p_min = (b_min + BUCKETS) // BUCKETS - self.retention.get(window, 1) - 1
        stale: list[Any] = []
        for name, value in raw.items():
            n = name.decode() if isinstance(name, bytes) else name
            if n == "first":
                first = float(value)
                continue
            idx_s, _, f = n[1:].partition(":")
            idx = int(idx_s)
            if n[0] == "b":
                if idx <= b_min:
                    stale.append(name)
                    continue
                buckets.setdefault(idx, {})[f] = int(value)
            else:
                if idx < p_min:
                    stale.append(name)
                    continue
                periods.setdefault(idx, {})[f] = int(value)
        view = build_view(buckets, periods, first, window, self.retention.get(window, 1), now, periods_complete=True)
        return view, stale

    async def new_origins(self, entity: str, since: float) -> tuple[int, int, float | None]:
        members = await self.redis.zrangebyscore(f"{self.prefix}:o:{entity}", since, "+inf")
        ips = sum(1 for m in members if (m.decode() if isinstance(m, bytes) else m).startswith("i:"))
        first = await self.redis.get(f"{self.prefix}:of:{entity}")
        return ips, len(members) - ips, float(first) if first is not None else None

    async def claim(self, name: str, now: float, cooldown: float) -> bool:
        if cooldown <= 0:
            return True
        ttl_ms = max(1000, int(cooldown * 1000))
        res = await self._claim(keys=[f"{self.prefix}:cd:{name}"], args=[repr(now), repr(cooldown), ttl_ms])
        return bool(int(res))

    async def release(self, name: str) -> None:
        await self.redis.delete(f"{self.prefix}:cd:{name}")

    async def sweep(self, now: float) -> None:
        return None  # Redis keys expire on their own

    async def aclose(self) -> None:
        await self.redis.aclose()
