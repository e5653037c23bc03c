"""Rate limits (GCRA) and budget reservations, behind one small backend protocol.

Admission asks a :class:`Limiter` to check and reserve, in one atomic step, everything that applies
to a request: the budgets (spend of the key, project and organization this month, prepaid credit)
and the GCRA buckets (requests and tokens per minute and per day, of the project and of the key).
Either everything is taken or nothing is. Settle commits the actual cost, releases the rest of the
reservation and corrects the token buckets by the difference between estimate and usage.

Two backends, chosen once at start: :mod:`keyplane.limits.memory` (one process; no await between
check and reserve) and :mod:`keyplane.limits.redis_backend` (a fleet; one Lua script per step, Redis
TIME as the clock).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

# Indexes of the four limits of a bucket, in this order everywhere (memory state, Redis fields, Lua).
RPM, TPM, RPD, TPD = 0, 1, 2, 3
UNITS = ("RPM", "TPM", "RPD", "TPD")
MINUTE_US = 60_000_000
DAY_US = 86_400_000_000
PERIODS_US = (MINUTE_US, MINUTE_US, DAY_US, DAY_US)


@dataclass(frozen=True, slots=True)
class BudgetRef:
    """One money budget a request draws on. ``key`` names its counter (period included)."""

    key: str  # e.g. "2026-01:project:proj_abc", "all:credit:org-xyz"
    limit: int | None  # micro-dollars; None: only tracked (spend is still counted)
    ttl: int  # seconds the counter is kept after its last change (0: forever)


class Bucket:
    """The GCRA state of one (project or key, model): four limits, 0 meaning none."""

    __slots__ = ("checks", "key", "limits", "token_checks")

    def __init__(self, key: str, limits: tuple[int, int, int, int]) -> None:
        self.key = key  # e.g. "p:proj_abc:gpt-4o-mini"
        self.limits = limits  # RPM, TPM, RPD, TPD
        # (index, limit, period µs, counts tokens) of the limits that are set: what admission loops over
        self.checks = tuple((k, lim, PERIODS_US[k], bool(k & 1)) for k, lim in enumerate(limits) if lim > 0)
        # (index, limit, period µs) of the token limits that are set: what settle corrects
        self.token_checks = tuple((k, lim, period) for k, lim, period, is_tokens in self.checks if is_tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bucket) and (self.key, self.limits) == (other.key, other.limits)

    def __hash__(self) -> int:
        return hash((self.key, self.limits))

    def __repr__(self) -> str:
        return f"Bucket({self.key!r}, {self.limits!r})"


@dataclass(slots=True)
class Granted:
    """Admission passed. ``tats`` are the buckets' new theoretical arrival times (µs), for the headers."""

    now_us: int
    tats: list[tuple[int, int, int, int]]


@dataclass(slots=True)
class Denied:
    """Admission refused; nothing was taken.

    kind "budget": ``index`` is the budget refused, ``spent``/``reserved`` its counters.
    kind "rate": ``index`` is the bucket, ``limit_index`` the limit (RPM...), ``used`` what the bucket
    holds, ``wait_us`` how long until the request would pass.
    kind "too_large": the request alone needs more than the limit allows at all.
    """

    kind: str
    index: int
    limit_index: int = 0
    used: int = 0
    wait_us: int = 0
    spent: int = 0
    reserved: int = 0


class Unseeded(Exception):
    """The shared budget counters are gone (Redis restarted empty, or was flushed): rebuild them from SQL
    and the journal, then retry; nothing is admitted meanwhile."""


class Rebuilding(Unseeded):
    """The shared budget counters were rebuilt after a loss less than ``REBUILD_GRACE_US`` ago: every instance is
    still holding again the reservations of its running requests (billing/engine.py hold_in_flight), so nothing is
    admitted against a limit yet; wait and retry."""


# After a loss, how long the rebuilt counters admit nothing against a limit: every instance's billing tick (every
# second) holds its running requests' reservations again within it.
REBUILD_GRACE_US = 2_000_000


@dataclass(slots=True)
class Reservation:
    """What settle needs to undo or commit an admission."""

    rid: str
    amount: int  # micro-dollars reserved on every budget
    tokens: int  # tokens charged to the token buckets at admission
    budgets: tuple[BudgetRef, ...]
    buckets: tuple[Bucket, ...]
    extra: dict[str, object] = field(default_factory=dict)


class SyncAdmit(Protocol):
    """:meth:`Limiter.admit` as a plain call (the in-process limiter's ``admit_now``)."""

    def __call__(
        self,
        rid: str,
        budgets: tuple[BudgetRef, ...],
        buckets: tuple[Bucket, ...],
        cost: int,
        tokens: int,
        ttl_us: int | None = None,
    ) -> Granted | Denied: ...


class Limiter(Protocol):
    async def admit(
        self,
        rid: str,
        budgets: tuple[BudgetRef, ...],
        buckets: tuple[Bucket, ...],
        cost: int,
        tokens: int,
        ttl_us: int | None = None,
    ) -> Granted | Denied:
        """Check every budget and bucket and take ``cost`` and ``tokens`` from all of them, or none; the
        reservation is held ``ttl_us`` (default: reservation_ttl_seconds) unless settled before."""
        ...

    async def settle(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        """Release the reservation, add the actual cost, correct the token buckets."""
        ...

    async def release(self, res: Reservation) -> None:
        """Undo an admission whose request failed before it knew the answer (a timeout, a lost reply, a
        cancelled request): its reservation freed, nothing spent, its tokens given back; idempotent."""
        ...

    async def top_up(self, marker: str, spent: dict[str, int]) -> bool:
        """Add ``spent`` to the budget counters once per ``marker`` (an instance's unapplied journal after
        another instance rebuilt the counters); True when added."""
        ...

    async def hold(self, res: Reservation, ttl_us: int) -> bool:
        """Hold ``res.amount`` on its budgets for ``ttl_us`` whatever their limits (a reservation restored after
        a restart), unless ``res.rid`` is held already; True when it was added."""
        ...

    async def renew(self, reservations: Collection[Reservation], ttl_us: int) -> int:
        """Extend every one of ``reservations`` still held to now + ``ttl_us`` (never shortening one held longer),
        in one step (one Redis call): the requests still running in this process (billing/renewal.py
        Renewal.renew). One no longer held (settled, or dropped at its TTL) is not taken again. Returns how
        many are held."""
        ...

    async def seed(self, spent: dict[str, int], ttls: dict[str, int], after_loss: bool = False) -> None:
        """Set counters where they are missing from the SQL ledger plus the journal's unapplied records
        (start-up, or Redis lost its data: ``after_loss``, rate buckets then start used up)."""
        ...

    async def spent(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        """(spent, reserved) of each budget counter (0, 0 when absent)."""
        ...

    async def sweep(self) -> int:
        """Release reservations past their TTL; returns how many (the Redis backend does it in admit)."""
        ...

    def forget_before(self, period_prefixes: set[str]) -> None:
        """Drop budget counters of periods other than these that nothing holds (in-process memory; Redis
        expires its own)."""
        ...

    async def epoch(self) -> tuple[int, int] | None:
        """(E, R) of the current counters: None when they were lost (Redis flushed: rebuild them from SQL);
        another value than last time when another instance rebuilt them (redis_backend's module doc). The
        in-process counters live and die with the process: always one epoch."""
        ...

    def pending_settles(self) -> int:
        """Settles and releases not taken yet (Redis was unreachable), replayed by :meth:`retry_pending`."""
        ...

    async def retry_pending(self) -> int:
        """Replay the pending settles (idempotent); how many went through."""
        ...

    def synchronous(self) -> SyncAdmit | None:
        """:meth:`admit` as a plain call, when the counters are in this process (no await between the check
        and the reservation, none for the event loop to schedule); None when they live elsewhere (Redis)."""
        ...

    def ping_client(self) -> Any:
        """The client the readiness check pings (Redis), or None when limits live in this process."""
        ...

    async def close(self) -> None: ...
