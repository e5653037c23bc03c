"""The x-ratelimit-* headers of an admitted request (billing/admission_replies.headers) are the ones the
per-request loop computed before it kept the reset texts: same names, values and order, any TATs."""

from __future__ import annotations

import random

import pytest

from keyplane.billing.admission_replies import _reset, headers
from keyplane.billing.engine import Plan
from keyplane.limits import MINUTE_US, RPM, TPM, Bucket, Granted, gcra

NAMES = {
    RPM: (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests"),
    TPM: (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens"),
}


def reference(plan: Plan, g: Granted) -> list[tuple[bytes, bytes]]:
    now = g.now_us
    out: list[tuple[bytes, bytes]] = []
    for idx in (RPM, TPM):
        names = NAMES[idx]
        best_rem = best_lim = best_reset = -1
        for bk, tats in zip(plan.buckets, g.tats, strict=True):
            lim = bk.limits[idx]
            if lim <= 0:
                continue
            held = max(tats[idx] - now, 0)
            rem = (MINUTE_US - held) * lim // MINUTE_US
            if best_rem < 0 or rem < best_rem:
                best_rem, best_lim, best_reset = max(rem, 0), lim, held
        if best_lim > 0:
            out += [
                (names[0], b"%d" % best_lim),
                (names[1], b"%d" % best_rem),
                (names[2], gcra.go_duration(best_reset / 1_000_000).encode()),
            ]
    return out


def test_same_headers_as_the_reference() -> None:
    rng = random.Random(3)
    now = 1_765_000_000_000_000
    for _ in range(5000):
        n = rng.randint(0, 3)
        buckets = tuple(
            Bucket(f"b{i}", tuple(rng.choice([0, 0, 1, 3, 500, 10**6, 10**12]) for _ in range(4)))  # type: ignore[misc]
            for i in range(n)
        )
        tats = [
            tuple(
                now + rng.choice([-5, 0, 1, 999, 1000, 1001, rng.randint(-MINUTE_US, 3 * MINUTE_US)]) for _ in range(4)
            )
            for _ in range(n)
        ]
        plan = Plan("p", None, (), (), buckets, tuple("w" for _ in buckets), ())
        g = Granted(now, tats)  # type: ignore[arg-type]
        assert headers(plan, g) == reference(plan, g)


def test_mismatched_tats_are_refused() -> None:
    plan = Plan("p", None, (), (), (Bucket("b", (1, 1, 0, 0)),), ("w",), ())
    with pytest.raises(ValueError):
        headers(plan, Granted(0, []))


@pytest.mark.parametrize("held", [0, 1, 499, 500, 999, 1000, 1001, 59_999_999, 60_000_000, 3_600_000_001, 10**12])
def test_reset_text(held: int) -> None:
    for us in (held, held + 1, max(held - 1, 0)):
        assert _reset(us) == gcra.go_duration(us / 1_000_000).encode()
        assert _reset(us) == gcra.go_duration(us / 1_000_000).encode()  # kept
