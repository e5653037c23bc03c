"""The billing engine of one process: configuration in memory, the limiter, the ledger, and the
background task that keeps them in step (reload on revision change, ledger flush, reservation sweep,
credit expiry, spend alerts, tier promotion). Nothing here runs on the request path except
:meth:`Billing.plan` (a dict lookup), :meth:`Billing.rollover` (once a month) and :attr:`Billing.renewal`
(a dict insert at admission, a pop at settle: the reservations of running requests, renewed until settled,
billing/renewal.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyplane import errors
from keyplane.billing import ledger as ledger_mod
from keyplane.billing import state, tiers
from keyplane.billing.price import Price
from keyplane.billing.prices import PriceTable
from keyplane.billing.ratelimits import merge
from keyplane.billing.renewal import Renewal
from keyplane.limits import Bucket, BudgetRef, Limiter, Unseeded
from keyplane.periodic import cancel_and_wait
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry
from keyplane.usage.journal import Record

log = logging.getLogger("keyplane.billing")

MONTH_TTL = 40 * 86_400  # budget counters of a month outlive it a little (late settles)
TICK = 0.1


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything admission checks for one (key, model) this month, built once and cached."""

    period: str
    price: Price | None
    budgets: tuple[BudgetRef, ...]
    scopes: tuple[tuple[str, str], ...]  # (scope, id) of each budget: api_key, project, organization, credit
    buckets: tuple[Bucket, ...]
    wheres: tuple[str, ...]  # each bucket in words, for 429 messages
    keys: tuple[str, ...]  # the budget keys, for the ledger
    # A money control applies (a spend limit or enforced credit: one of the budgets has a limit), decided once
    controlled: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "controlled", any(ref.limit is not None for ref in self.budgets))


class Billing:
    poll_seconds = TICK  # the background step's period; a snapshot change wakes it at once (on_change)

    def __init__(
        self,
        rt: Runtime,
        prices: PriceTable,
        table: tiers.TierTable,
        limiter: Limiter,
        ledger: ledger_mod.Ledger,
        fleet: bool,
    ) -> None:
        self.rt = rt
        self.prices = prices
        self.tiers = table
        self.limiter = limiter
        self.ledger = ledger
        self.fleet = fleet
        s = rt.settings
        self.limits_enabled = s.file.limits.enabled
        self.enforce_credit = s.file.credit.enforce
        self.default_max_tokens = s.default_max_tokens
        self.cfg = state.BillingConfig()
        self.plans: dict[tuple[str, str], Plan] = {}
        self.period = ""
        self.period_end = 0
        self.credit_cap = 0
        self.credit_expiry: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._seed_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._reloaded = asyncio.Event()  # set (and replaced) after every reload: what :meth:`current` waits for
        self._alert_tasks: set[asyncio.Task[Any]] = set()
        from keyplane.usage import journal_folder

        self.journal: Path = journal_folder(s)
        self.epoch: tuple[int, int] | None = None  # the fleet counters' epoch this instance accounted for
        self.seen_epoch = False  # counters existed once: their absence now is a loss of Redis's data
        self._reseed_task: asyncio.Task[None] | None = None
        self.holds_counted: set[str] = set()  # dead writers whose holds a seed counted (usage/holds.py)
        self.renewal = Renewal(rt, limiter, s.reservation_ttl_seconds)  # requests admitted, not settled yet
        ledger.credit_key = lambda: self.credit_key if self.credit_active else None
        ledger.register()  # the usage applier writes the spend ledger in its own transaction
        self.rollover(rt.clock.now())

    # --- configuration ---------------------------------------------------------------------------

    @property
    def org_id(self) -> str:
        return self.rt.snapshot.org_id

    @property
    def credit_key(self) -> str:
        return f"all:credit:{self.org_id}"

    @property
    def credit_active(self) -> bool:
        """Credit use is counted once a grant exists (or [credit] enforce = true)."""
        return bool(self.cfg.grants) or self.enforce_credit is True

    @property
    def credit_enforced(self) -> bool:
        if self.enforce_credit is not None:
            return self.enforce_credit
        return bool(self.cfg.grants)

    async def reload(self) -> None:
        # One at a time: a slow background reload must not land after (and undo) a newer one.
        async with self._reload_lock:
            rev = self.rt.snapshot.revision
            self.cfg = await state.load(self.rt.engine, self.tiers, rev)
            self._credit_changed()
        self._reloaded.set()
        self._reloaded = asyncio.Event()

    def behind(self) -> bool:
        """Whether the snapshot has loaded a newer revision than these limits (a key rotated, a limit set)."""
        return self.cfg.revision < self.rt.snapshot.revision

    async def current(self, wait: float = 2.0) -> None:
        """Wait (bounded) while the limits are older than the snapshot: a key the snapshot serves is never admitted
        under limits older than it (a rotated key's new value before the limits copied to it reached this
        instance would have none). Fail closed: 503 ``authority_stale`` past ``wait``. The limits are reloaded here
        when no reload is under way (the background step may be busy with other work: a batch poll, alerts), else
        the one under way is waited for; a reload that fails is tried again until ``wait`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.behind():
            left = deadline - loop.time()
            if left <= 0:
                raise errors.stale_authority(wait)
            try:
                async with asyncio.timeout(left):  # not wait_for: on 3.11 it can swallow a cancellation
                    if self._reload_lock.locked():
                        await self._reloaded.wait()
                    else:
                        await self.reload()
            except TimeoutError:
                continue  # (the deadline check above answers)
            except Exception as e:  # the store is unreachable: the limits stay behind, tried again
                log.debug("billing: reloading the limits for admission failed: %s", e)
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    def _credit_changed(self) -> None:
        now = self.rt.clock.now()
        self.credit_cap = self.cfg.credit_cap(now)
        self.credit_expiry = self.cfg.next_expiry(now)
        self.plans = {}

    def rollover(self, now: float) -> None:
        """A new month (or the first request): new budget counters, plans rebuilt."""
        self.period = state.period_of(now)
        self.period_end = state.period_bounds(now)[1]
        self.plans = {}
        self.limiter.forget_before({self.period, "all"})  # counters of past months that nothing holds any more

    def plan(self, entry: KeyEntry, model: str) -> Plan:
        p = self.plans.get((entry.id, model))
        if p is None:
            p = self._build(entry, model)
            if len(self.plans) > 100_000:
                self.plans = {}
            self.plans[(entry.id, model)] = p
        return p

    def _budget(self, scope: str, sid: str, counter: str | None = None) -> BudgetRef:
        """The budget of a scope: its limit, counted under ``counter`` (a key's line: KeyEntry.budget_id)."""
        lim = self.cfg.spend_limits.get((scope, sid))
        limit = lim[0] if lim is not None and lim[1] else None
        return BudgetRef(f"{self.period}:{scope}:{counter or sid}", limit, MONTH_TTL)

    def counter_id(self, scope: str, sid: str) -> str:
        """The id a scope's spend is counted under: a key's line's first key (its rotated values share it)."""
        if scope == "api_key" and (e := self.rt.snapshot.keys_by_id.get(sid)) is not None:
            return e.budget_id
        return sid

    def _build(self, entry: KeyEntry, model: str) -> Plan:
        pid = entry.project_id or ""
        scopes: list[tuple[str, str]] = [("api_key", entry.id), ("project", pid), ("organization", self.org_id)]
        budgets = [self._budget("api_key", entry.id, entry.budget_id)] + [self._budget(s, i) for s, i in scopes[1:]]
        if self.credit_active:
            budgets.append(BudgetRef(self.credit_key, self.credit_cap if self.credit_enforced else None, 0))
            scopes.append(("credit", self.org_id))
        buckets: list[Bucket] = []
        wheres: list[str] = []
        if self.limits_enabled:
            limits = self.effective_limits("project", pid, model)
            if any(limits):
                name = self.rt.snapshot.projects.get(pid)
                buckets.append(Bucket(f"p:{pid}:{model}", limits))
                wheres.append(f"project `{name.name}` ({pid})" if name else f"project {pid}")
            if entry.id in self.cfg.keys_with_limits:
                klimits = self.key_limits(entry.id, model)
                if any(klimits):
                    buckets.append(Bucket(f"k:{entry.budget_id}:{model}", klimits))  # one per rotation line
                    wheres.append(f"API key `{entry.name}` ({entry.id})")
        return Plan(
            self.period,
            self.prices.lookup(model),
            tuple(budgets),
            tuple(scopes),
            tuple(buckets),
            tuple(wheres),
            tuple(b.key for b in budgets),
        )

    def effective_limits(self, scope: str, sid: str, model: str) -> tuple[int, int, int, int]:
        """A project's limits for a model: its overrides over the tier's defaults."""
        return merge(self.tiers.limits(self.cfg.tier, model), self.cfg.overrides.get((scope, sid, model)))

    def key_limits(self, key_id: str, model: str) -> tuple[int, int, int, int]:
        """A key's own limits (none unless set)."""
        return merge((0, 0, 0, 0), self.cfg.overrides.get(("api_key", key_id, model)))

    # --- counters ----------------------------------------------------------------------------------

    async def seed(self, only_if_needed: bool = False) -> None:
        """Budget counters from the SQL ledger plus the journal's unapplied records (ledger.snapshot):
        this month's spend and the credit used; then the reservations of the batches still running
        (:meth:`hold_batches`), which live in the limiter only."""
        async with self._seed_lock:
            if only_if_needed and await self.limiter.epoch() is not None:
                return  # another request (or instance) rebuilt them while this one waited
            await self.reload()  # the grants' used credit as SQL has it now
            credit = self.credit_key if self.credit_active else None
            snap = await ledger_mod.snapshot(self.rt.engine, self.period, self.journal, credit)
            ttls = dict.fromkeys(snap.spent, MONTH_TTL)
            if credit is not None:
                ttls[credit] = 0
            if snap.unapplied:
                log.info("budget counters include %d usage records not yet applied to the store", snap.unapplied)
            after_loss = self.seen_epoch  # seeded before: the counters were lost (Redis; never in process)
            if after_loss:
                log.warning(
                    "the shared budget counters are gone (Redis restarted empty or flushed): requests "
                    "wait until they are rebuilt from SQL and the journal"
                )
            await self.limiter.seed(snap.spent, ttls, after_loss=after_loss)
            self.holds_counted |= snap.held
            self.epoch = await self.limiter.epoch()
            self.seen_epoch = True
            if after_loss:
                await self.hold_in_flight()
            await self.hold_batches()
            if after_loss:
                log.warning("budget counters rebuilt in Redis from SQL and %d journal records", snap.unapplied)

    async def hold_batches(self) -> int:
        """Hold again the reservations of the batches still running (billing/batches.py hold_reservations)."""
        from keyplane.billing.batches import hold_reservations

        return await hold_reservations(self.rt, self.limiter)

    async def hold_in_flight(self) -> int:
        """Hold again the reservations of this process's running requests (Renewal.in_flight): the counters were
        rebuilt after a loss from SQL and the journal, where a running request is not yet, and its reservation
        was lost with the rest. Other instances do the same when they see the rebuild (:meth:`reseed_if_needed`);
        Redis admits nothing against a limit meanwhile (limits.REBUILD_GRACE_US)."""
        n = 0
        for res in list(self.renewal.in_flight.values()):
            n += await self.limiter.hold(res, self.renewal.ttl_us)
        if n:
            log.warning("held again the reservations of %d running requests after the counters were rebuilt", n)
        return n

    async def reseed_if_needed(self) -> None:
        """Fleet: rebuild the counters when Redis lost them; add this instance's unapplied journal records
        to counters another instance rebuilt (once per rebuild)."""
        current = await self.limiter.epoch()
        if current is None:
            await self.seed(only_if_needed=True)
            current = await self.limiter.epoch()  # this instance's rebuild, or another's it waited for
            if current is None:
                return
        if self.epoch is not None and current != self.epoch and current[1]:
            await self.hold_in_flight()  # first: no SQL, and admission against a limit waits for it
            await self._top_up(current)
        self.epoch = current
        self.seen_epoch = True

    async def _top_up(self, current: tuple[int, int]) -> None:
        """Another instance rebuilt the counters from SQL after a loss: what this instance's journal holds
        and the store does not (requests finished before the rebuild) is missing from them."""
        writer = self.rt.features.usage_writer
        if writer is None:
            return
        credit = self.credit_key if self.credit_active else None
        snap = await ledger_mod.snapshot(
            self.rt.engine,
            self.period,
            self.journal,
            credit,
            before_us=current[0],
            writer=writer.writer,
            journal_only=True,
        )
        extra = {k: v for k, v in snap.spent.items() if v}
        if extra:
            await self.limiter.top_up(f"{current[0]}:{writer.writer}", extra)
            log.warning(
                "budget counters rebuilt by another instance: added this instance's %d unapplied usage records",
                snap.unapplied,
            )

    async def dead_holds(self, writer: str, records: list[Record]) -> None:
        """A dead writer's holds, about to be journaled as records of their own (usage/holds.py claim): its requests
        under a money control that were running when it ended, billed at their reservations. Added to the budget
        counters unless a seed counted them already (a seed reads every dead writer's holds): another worker
        of this host that died while this one ran, or a fleet instance restarted on counters Redis kept."""
        if writer in self.holds_counted:
            return
        credit = self.credit_key if self.credit_active else None
        spent: dict[str, int] = {}
        ledger_mod.add_spend(spent, records, credit)
        extra = {k: v for k, v in spent.items() if v and (k == credit or k.startswith(self.period + ":"))}
        if extra and await self.limiter.top_up(f"holds:{writer}", extra):
            log.warning(
                "budget counters: added the reservations of %d requests writer %s had running", len(records), writer
            )

    def reseed_soon(self) -> None:
        """Admission found no counters: rebuild them in the background (requests are refused meanwhile)."""
        if self._reseed_task is None or self._reseed_task.done():
            self._reseed_task = asyncio.get_running_loop().create_task(self._reseed())

    async def _reseed(self) -> None:
        try:
            await self.reseed_if_needed()
        except Exception as e:
            log.warning("rebuilding the budget counters failed (%s: %s); will retry", type(e).__name__, e)

    async def spent(self, scope: str, sid: str, period: str | None = None) -> tuple[int, int]:
        """(spent, reserved) micro-dollars of a scope this month (credit: in total)."""
        key = self.credit_key if scope == "credit" else f"{period or self.period}:{scope}:{self.counter_id(scope, sid)}"
        try:
            return (await self.limiter.spent([key]))[key]
        except Unseeded:
            return 0, 0

    # --- background ------------------------------------------------------------------------------

    def start(self) -> None:
        self._snapshot_moved = asyncio.Event()
        self.rt.snapshot.on_change(self._snapshot_moved.set)  # the revision check below is the fallback
        self._task = asyncio.create_task(self._run(), name="billing")
        self.renewal.start()

    async def _run(self) -> None:
        mono = time.monotonic
        next_flush = next_second = mono()
        next_tier = mono() + 5
        quiet_until = 0.0
        flush_every = self.rt.settings.ledger_flush_seconds
        from keyplane.billing import spend_firing

        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):  # not wait_for: on 3.11 it can swallow a cancellation
                    await self._snapshot_moved.wait()
            self._snapshot_moved.clear()
            try:
                if self.rt.snapshot.revision != self.cfg.revision:
                    await self.reload()
                t = mono()
                if t >= next_flush:
                    next_flush = t + flush_every
                    await self.retry_pending()
                if t >= next_second:
                    next_second = t + 1.0
                    await self.limiter.sweep()
                    now = self.rt.clock.now()
                    if self.credit_expiry is not None and now >= self.credit_expiry:
                        await self.reload()  # the grants' used credit as the store has it now
                    if self.fleet:
                        await self.reseed_if_needed()
                    await spend_firing.check_alerts(self)
                if t >= next_tier:
                    next_tier = t + 60
                    await self.promote()
                    await self._poll_batches()
            except Exception as e:  # the store or Redis may be briefly unreachable: try again next tick
                if mono() >= quiet_until:  # once every 30 s at most, not every tick
                    quiet_until = mono() + 30
                    log.warning(
                        "billing background step failed (%s: %s); will retry",
                        type(e).__name__,
                        e,
                        exc_info=log.isEnabledFor(logging.DEBUG),
                    )

    async def _poll_batches(self) -> None:
        """Batches that finished at the provider and nobody read through keyplane: metered (billing/batches.py)."""
        batches = self.rt.features.batches
        if batches is None:
            return
        try:
            await batches.poll()
        except Exception as e:
            log.warning("batch poll failed (%s: %s); will retry", type(e).__name__, e)

    async def retry_pending(self) -> None:
        """Fleet: replay the settles and releases Redis did not take (idempotent, see redis_backend)."""
        if self.limiter.pending_settles():
            n = await self.limiter.retry_pending()
            if n:
                log.info("replayed %d settles that Redis had not taken", n)

    async def flush(self) -> None:
        """Bring the SQL ledger up to date now: apply the usage journal (the ledger is written in the same
        transactions), then reload the grants' used credit. The applier does it on its own every
        usage_apply_seconds; tests and shutdown call this."""
        applier = self.rt.features.usage_applier
        if applier is not None:
            await applier.apply_pending()
        await self.retry_pending()
        await self.reload()

    async def promote(self) -> tuple[str, str] | None:
        now = self.rt.clock.now()
        t = self.tiers
        if t.pinned or t.index(t.qualified(self.cfg.standing, now).name) <= t.index(self.cfg.tier):
            return None  # nothing to do: no write transaction
        async with self.rt.sessions() as s, s.begin():
            moved = await tiers.promote(s, self.tiers, now)
        if moved:
            log.info("usage tier promoted from %s to %s", *moved)
            await self.rt.refresher.refresh()
            await self.reload()
        return moved

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._alert_tasks.add(task)
        task.add_done_callback(self._alert_tasks.discard)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.renewal.stop()
        for t in list(self._alert_tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5)
        if self._reseed_task is not None:
            self._reseed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reseed_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.retry_pending(), 5)
        if pending := self.limiter.pending_settles():
            log.warning("%d settles never reached Redis; the counters are rebuilt from SQL if Redis lost them", pending)
        self.ledger.unregister()  # after the usage feature stopped (features stop in reverse order)
        await self.limiter.close()
