"""The in-process limiter: one node, plain dicts, no await between check and reserve.

``admit`` runs start to end without yielding to the event loop, so it is atomic with respect to every
other request of this process; it costs one dict lookup per budget and per bucket. Reservations that
are never settled (the process lost them: a bug) are released by :meth:`sweep` after their TTL; those of
requests still running are renewed by :meth:`renew` (billing/engine.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from keyplane.limits import Bucket, BudgetRef, Denied, Granted, Reservation, SyncAdmit, gcra


def _undo(states: list[list[int]], olds: list[list[int]]) -> None:
    """Put every bucket an admission took from back as it was (the admission is refused)."""
    for st, old in zip(states, olds, strict=True):
        st[:] = old


class MemoryLimiter:
    def __init__(self, now: Callable[[], float], reservation_ttl: float) -> None:
        self._now = now
        self.ttl_us = int(reservation_ttl * 1_000_000)
        self.budgets: dict[str, list[int]] = {}  # key -> [spent, reserved] (micro-dollars)
        self._topped: set[str] = set()  # top_up markers taken
        self.tats: dict[str, list[int]] = {}  # bucket key -> TAT per limit (µs)
        self.reservations: dict[str, tuple[int, int, tuple[str, ...]]] = {}  # rid -> (expires, amount, keys)

    def now_us(self) -> int:
        return int(self._now() * 1_000_000)

    def admit_now(
        self,
        rid: str,
        budgets: tuple[BudgetRef, ...],
        buckets: tuple[Bucket, ...],
        cost: int,
        tokens: int,
        ttl_us: int | None = None,
    ) -> Granted | Denied:
        now = int(self._now() * 1_000_000)
        # Order of refusals: a request too large for a limit (never passes), then budgets (waiting does
        # not help), then rate limits (the longest wait, so that one retry after it is enough). Each limit that
        # passes is taken at once (its new TAT written), and every bucket put back as it was if anything refuses:
        # no await in between, so no other request sees the taken state of a refused one.
        news: list[tuple[int, int, int, int]] = []
        states: list[list[int]] = []
        olds: list[list[int]] = []
        worst: Denied | None = None
        tats = self.tats
        for j, bk in enumerate(buckets):
            st = tats.get(bk.key)
            if st is None:
                st = tats[bk.key] = [0, 0, 0, 0]
            states.append(st)
            olds.append(st[:])
            new = [0, 0, 0, 0]
            for k, limit, period, is_tokens in bk.checks:
                units = tokens if is_tokens else 1
                if units > limit:
                    _undo(states, olds)
                    return Denied("too_large", j, k, used=units)
                tat = st[k]
                # gcra.try_take, inline (four limits per bucket on every request): the new TAT, allowed while it
                # stays within now + period
                nt = (tat if tat > now else now) - (-units * period // limit)
                if nt - now <= period:
                    new[k] = st[k] = nt
                elif worst is None or nt - period - now > worst.wait_us:
                    worst = Denied("rate", j, k, used=gcra.used(tat, now, limit, period), wait_us=nt - period - now)
            news.append((new[0], new[1], new[2], new[3]))
        counters = self.budgets
        rows: list[list[int]] = []
        for i, b in enumerate(budgets):
            c = counters.get(b.key)
            if c is None:
                c = counters[b.key] = [0, 0]
            if b.limit is not None and c[0] + c[1] + cost > b.limit:
                _undo(states, olds)
                return Denied("budget", i, spent=c[0], reserved=c[1])
            rows.append(c)
        if worst is not None:
            _undo(states, olds)
            return worst
        if cost:
            for c in rows:
                c[1] += cost
            self.reservations[rid] = (now + (ttl_us or self.ttl_us), cost, tuple([b.key for b in budgets]))
        return Granted(now, news)

    async def admit(
        self,
        rid: str,
        budgets: tuple[BudgetRef, ...],
        buckets: tuple[Bucket, ...],
        cost: int,
        tokens: int,
        ttl_us: int | None = None,
    ) -> Granted | Denied:
        return self.admit_now(rid, budgets, buckets, cost, tokens, ttl_us)

    async def hold(self, res: Reservation, ttl_us: int) -> bool:
        """Hold ``res.amount`` on every budget of ``res`` for ``ttl_us``, whatever their limits (a reservation
        taken before, restored: a running batch's after a restart), unless ``res.rid`` is held already."""
        if res.rid in self.reservations or res.amount <= 0 or ttl_us <= 0:
            return False
        for b in res.budgets:
            c = self.budgets.get(b.key)
            if c is None:
                c = self.budgets[b.key] = [0, 0]
            c[1] += res.amount
        self.reservations[res.rid] = (self.now_us() + ttl_us, res.amount, tuple(b.key for b in res.budgets))
        return True

    async def renew(self, reservations: Collection[Reservation], ttl_us: int) -> int:
        """Extend each reservation still held to now + ``ttl_us`` (one held longer, a batch's, is left as it is)."""
        held = self.reservations
        until = self.now_us() + ttl_us
        n = 0
        for res in reservations:
            r = held.get(res.rid)
            if r is None:
                continue  # settled, or dropped at its TTL: not taken again
            n += 1
            if r[0] < until:
                held[res.rid] = (until, r[1], r[2])
        return n

    def settle_now(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        held = self.reservations.pop(res.rid, None)
        amount = held[1] if held is not None else 0
        counters = self.budgets
        for b in res.budgets:
            c = counters.get(b.key)
            if c is None:
                c = counters[b.key] = [0, 0]
            c[1] -= amount
            c[0] += actual_cost
        delta = actual_tokens - res.tokens
        if delta:
            now = int(self._now() * 1_000_000)
            tats = self.tats
            for bk in res.buckets:
                st = tats.get(bk.key)
                if st is None:
                    continue
                for k, limit, period in bk.token_checks:
                    # gcra.correct, inline: ``delta`` more tokens (or fewer) than admission charged
                    tat = st[k]
                    if delta > 0:
                        st[k] = (tat if tat > now else now) - (-delta * period // limit)
                    else:
                        nt = tat - (-delta * period // limit)
                        st[k] = nt if nt > now else now

    async def settle(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        self.settle_now(res, actual_cost, actual_tokens)

    async def release(self, res: Reservation) -> None:
        if res.rid in self.reservations:  # idempotent: a second release finds nothing held
            self.settle_now(res, 0, 0)

    async def top_up(self, marker: str, spent: dict[str, int]) -> bool:
        """The in-process counters are never rebuilt by another instance (one epoch): once per marker all
        the same, as the Redis backend does."""
        if marker in self._topped:
            return False
        self._topped.add(marker)
        for key, value in spent.items():
            self.budgets.setdefault(key, [0, 0])[0] += value
        return True

    async def seed(self, spent: dict[str, int], ttls: dict[str, int], after_loss: bool = False) -> None:
        for key, value in spent.items():
            if key not in self.budgets:
                self.budgets[key] = [value, 0]

    async def spent(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for k in keys:
            c = self.budgets.get(k)
            out[k] = (c[0], c[1]) if c else (0, 0)
        return out

    async def sweep(self) -> int:
        now = self.now_us()
        expired = [rid for rid, (exp, _, _) in self.reservations.items() if exp <= now]
        for rid in expired:
            _, amount, keys = self.reservations.pop(rid)
            for k in keys:
                c = self.budgets.get(k)
                if c is not None:
                    c[1] -= amount
        # Bucket states that are full again carry no information: drop them (memory stays bounded).
        if len(self.tats) > 10_000:
            for key in [k for k, st in self.tats.items() if max(st) <= now]:
                del self.tats[key]
        return len(expired)

    def forget_before(self, period_prefixes: set[str]) -> None:
        """Drop budget counters of past periods that nothing holds any more."""
        for key in [k for k, c in self.budgets.items() if k.split(":", 1)[0] not in period_prefixes and not c[1]]:
            del self.budgets[key]

    _EPOCH: tuple[int, int] = (0, 0)

    async def epoch(self) -> tuple[int, int] | None:
        return self._EPOCH  # never lost while the process lives (it is seeded at start)

    def pending_settles(self) -> int:
        return 0  # settles cannot fail in process

    async def retry_pending(self) -> int:
        return 0

    def synchronous(self) -> SyncAdmit:
        return self.admit_now

    def ping_client(self) -> None:
        return None

    async def close(self) -> None:
        return None
