"""MemoryLimiter.admit_now and settle_now decide, and leave their counters, exactly as the loops they replaced (with
gcra's functions inline: a limit taken as soon as it passes, every bucket put back if anything refuses): random
sequences of admissions and settles on two limiters, one of them running the reference loops kept here."""

from __future__ import annotations

import random

from keyplane.limits import PERIODS_US, TPD, TPM, Bucket, BudgetRef, Denied, Granted, Reservation, gcra
from keyplane.limits.memory import MemoryLimiter


class Reference(MemoryLimiter):
    def admit_now(self, rid, budgets, buckets, cost, tokens, ttl_us=None):  # type: ignore[no-untyped-def]
        now = int(self._now() * 1_000_000)
        news, states, worst, tats = [], [], None, self.tats
        for j, bk in enumerate(buckets):
            st = tats.get(bk.key)
            if st is None:
                st = tats[bk.key] = [0, 0, 0, 0]
            new = [0, 0, 0, 0]
            for k, limit, period, is_tokens in bk.checks:
                units = tokens if is_tokens else 1
                if units > limit:
                    return Denied("too_large", j, k, used=units)
                tat = st[k]
                nt = (tat if tat > now else now) + -(-units * period // limit)
                if nt - now <= period:
                    new[k] = nt
                elif worst is None or nt - period - now > worst.wait_us:
                    worst = Denied("rate", j, k, used=gcra.used(tat, now, limit, period), wait_us=nt - period - now)
            news.append((new[0], new[1], new[2], new[3]))
            states.append(st)
        rows = []
        for i, b in enumerate(budgets):
            c = self.budgets.get(b.key)
            if c is None:
                c = self.budgets[b.key] = [0, 0]
            if b.limit is not None and c[0] + c[1] + cost > b.limit:
                return Denied("budget", i, spent=c[0], reserved=c[1])
            rows.append(c)
        if worst is not None:
            return worst
        for st, taken in zip(states, news, strict=True):
            for k in range(4):
                if taken[k]:
                    st[k] = taken[k]
        if cost:
            for c in rows:
                c[1] += cost
            self.reservations[rid] = (now + (ttl_us or self.ttl_us), cost, tuple(b.key for b in budgets))
        return Granted(now, news)

    def settle_now(self, res, actual_cost, actual_tokens):  # type: ignore[no-untyped-def]
        held = self.reservations.pop(res.rid, None)
        for b in res.budgets:
            c = self.budgets.get(b.key)
            if c is None:
                c = self.budgets[b.key] = [0, 0]
            if held is not None:
                c[1] -= held[1]
            c[0] += actual_cost
        delta = actual_tokens - res.tokens
        if delta:
            now = self.now_us()
            for bk in res.buckets:
                st = self.tats.get(bk.key)
                if st is None:
                    continue
                for k in (TPM, TPD):
                    limit = bk.limits[k]
                    if limit > 0:
                        st[k] = gcra.correct(st[k], now, delta, limit, PERIODS_US[k])


def test_same_decisions_and_counters() -> None:
    rng = random.Random(11)
    clock = [1_765_000_000.0]
    a, b = MemoryLimiter(lambda: clock[0], 600), Reference(lambda: clock[0], 600)
    buckets = [Bucket(f"b{i}", tuple(rng.choice([0, 1, 5, 100, 10_000]) for _ in range(4))) for i in range(4)]  # type: ignore[misc]
    budgets = [BudgetRef(f"u{i}", rng.choice([None, 50, 10_000]), 0) for i in range(3)]
    held: list[Reservation] = []
    for n in range(20_000):
        clock[0] += rng.choice([0, 0, 0.001, 0.5, 7])
        bks = tuple(rng.sample(buckets, rng.randint(0, 2)))
        bgs = tuple(rng.sample(budgets, rng.randint(0, 3)))
        cost, tokens = rng.choice([0, 1, 7, 40]), rng.choice([0, 1, 3, 60, 20_000])
        ra = a.admit_now(f"r{n}", bgs, bks, cost, tokens)
        rb = b.admit_now(f"r{n}", bgs, bks, cost, tokens)
        assert ra == rb
        if isinstance(ra, Granted):
            held.append(Reservation(f"r{n}", cost, tokens, bgs, bks))
        if held and rng.random() < 0.5:
            res = held.pop(rng.randrange(len(held)))
            actual, used = rng.choice([0, 3, 100]), rng.choice([0, 5, 70])
            a.settle_now(res, actual, used)
            b.settle_now(res, actual, used)
        assert a.tats == b.tats and a.budgets == b.budgets and a.reservations == b.reservations
