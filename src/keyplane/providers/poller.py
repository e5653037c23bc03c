"""The background poller (an app.FEATURES Feature): every ``sync_interval`` seconds, each provider's sync.

A provider whose admin key variable is missing is logged and skipped; a failed sync is logged (never
the key) and retried at the next interval. In a fleet one instance polls each provider at a time: the
holder of its lease (keyplane.providers.lease), checked at every heartbeat (a third of the lease's time to
live); the others serve the figures it stored (their /metrics gauges read the same SQL) and take over
within one interval when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from keyplane import alerts
from keyplane.periodic import cancel_and_wait
from keyplane.providers import lease
from keyplane.providers.config import ProviderSection
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.metrics import ProviderCollector
from keyplane.providers.service import prices_for, rules_for, sync_provider

if TYPE_CHECKING:
    from keyplane.app import Feature
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.providers")


class Poller:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tasks: list[asyncio.Task[None]] = []
        self.keys: Any = None
        self.last: dict[str, dict[str, Any]] = {}
        self.metrics = ProviderCollector()
        self.holder = lease.new_holder()
        self.leader: dict[str, bool] = {}  # provider -> whether this instance held its lease at the last heartbeat
        self.metrics.leader = self.leader
        self._rules: list[Any] | None = None
        self._prices_state: tuple[Any, bool] = (None, False)
        usage_metrics = rt.features.usage_metrics  # keyplane.usage's registry: served on /metrics
        if usage_metrics is not None:
            usage_metrics.registry.register(self.metrics)

    def start(self) -> None:
        for cfg in self.rt.settings.file.providers:
            if cfg.sync_interval <= 0:
                continue
            try:
                conn = Connector(cfg)
            except ProviderError as e:
                log.error("%s; its background sync is off", e)
                continue
            loop = asyncio.get_running_loop()
            self.tasks.append(loop.create_task(self._loop(cfg, conn), name=f"provider-{cfg.name}"))

    async def _prices(self, rules: list[Any]) -> Any:
        """The price table: the rules' dollar estimates and the estimated-cost gauges on /metrics."""
        billing = self.rt.features.billing  # the billing feature's table, when it runs
        if billing is not None:
            return billing.prices
        try:
            return await asyncio.to_thread(prices_for, self.rt.settings, rules, True)
        except ValueError as e:  # PriceError: the syncs go on; the dollar rules see $0 until a restart
            if any(r.metric == "cost_usd" for r in rules):
                log.error("provider rules: no price table (%s): spend_surge and cost ceilings cannot fire", e)
            else:
                log.warning("providers: no price table (%s): no estimated cost on /metrics", e)
            return None

    async def _rules_prices(self) -> tuple[list[Any], Any]:
        if self._rules is None:
            self._rules = rules_for(self.rt.settings)
        prices, priced = self._prices_state
        if not priced:
            prices = await self._prices(self._rules)
            self._prices_state = (prices, True)
        return self._rules, prices

    async def sync_once(self, cfg: ProviderSection, conn: Connector, now: int) -> dict[str, Any]:
        """One whole sync of a provider (inventory, usage, rules), then the /metrics gauges; raises on failure."""
        rules, prices = await self._rules_prices()
        try:
            out = await sync_provider(self.rt.sessions, conn, now, rules, alerts.for_runtime(self.rt), prices)
        except Exception:
            self.metrics.failures[cfg.name] = self.metrics.failures.get(cfg.name, 0) + 1
            raise
        self.last[cfg.name] = out
        self.metrics.count_events(cfg.name, out["events"])
        async with self.rt.read() as s:
            await self.metrics.refresh(s, cfg.name, now, prices, synced=True)
        return out

    async def tick(self, cfg: ProviderSection, conn: Connector, now: float | None = None) -> bool:
        """One heartbeat: take or renew the provider's lease; the holder syncs when the interval since the last
        sync (by any instance) has passed, the others refresh their gauges. True when this call synced."""
        now = self.rt.clock.now() if now is None else now
        ttl = lease.ttl_for(cfg.sync_interval)
        state = await lease.acquire(self.rt.sessions, cfg.name, self.holder, now, ttl)
        was = self.leader.get(cfg.name)
        self.leader[cfg.name] = state.held
        if state.held != was and was is not None:
            log.info("provider %s: this instance %s its poller lease", cfg.name, "took over" if state.held else "lost")
        if not state.held:
            _, prices = await self._rules_prices()
            async with self.rt.read() as s:
                await self.metrics.refresh(s, cfg.name, int(now), prices, synced=False)
            return False
        if state.synced_at is not None and now < state.synced_at + cfg.sync_interval:
            return False
        at = int(now)
        await lease.mark_synced(self.rt.sessions, cfg.name, self.holder, at)
        task = asyncio.get_running_loop().create_task(self.sync_once(cfg, conn, at))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=ttl / 3)
                if not task.done() and not await lease.renew(
                    self.rt.sessions, cfg.name, self.holder, self.rt.clock.now(), ttl
                ):
                    log.error("provider %s: the poller lease was lost during a sync; stopping it", cfg.name)
                    self.leader[cfg.name] = False
                    task.cancel()
        finally:
            if not task.done():
                task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return False
        return True

    async def _loop(self, cfg: ProviderSection, conn: Connector) -> None:
        step = lease.ttl_for(cfg.sync_interval) / 3
        failing = False  # a store outage fails every heartbeat: one traceback, then one line per heartbeat
        try:
            while True:
                try:
                    await self.tick(cfg, conn)
                    failing = False
                except ProviderError as e:
                    log.error("provider sync failed: %s", e)
                except Exception as e:
                    if failing:
                        log.error("provider %s: poller heartbeat failed again (%s)", cfg.name, type(e).__name__)
                    else:
                        log.exception("provider %s: sync failed", cfg.name)
                    failing = True
                await asyncio.sleep(step)
        finally:
            await conn.close()

    async def start_bindings(self) -> None:
        """Projects bound to a provider project (keyplane.providers.bindings): the proxy's key map, loaded now
        and reloaded every RELOAD_SECONDS, and the rotated-out keys deleted once their grace has passed."""
        from keyplane.providers.bindings import KeyBox, UpstreamKeys

        self.keys = UpstreamKeys(self.rt.settings.file.providers, KeyBox(self.rt.settings.secret_key))
        async with self.rt.read() as s:
            await self.keys.reload(s)
        self.rt.features.providers_keys = self.keys
        if self.rt.settings.file.providers:
            self.tasks.append(asyncio.get_running_loop().create_task(self._bindings_loop(), name="provider-bindings"))

    async def _bindings_loop(self) -> None:
        from keyplane.providers.bindings import RELOAD_SECONDS, retire_due

        conns: dict[str, Connector] = {}
        try:
            while True:
                await asyncio.sleep(RELOAD_SECONDS)
                try:
                    async with self.rt.read() as s:
                        await self.keys.reload(s)
                    for cfg in self.rt.settings.file.providers:
                        if cfg.name not in conns:
                            with contextlib.suppress(ProviderError):
                                conns[cfg.name] = Connector(cfg)
                    await retire_due(self.rt.sessions, conns, int(self.rt.clock.now()))
                except Exception:
                    log.exception("provider bindings: reload failed")
        finally:
            for c in conns.values():
                await c.close()

    async def stop(self) -> None:
        for t in self.tasks:
            await cancel_and_wait(t)
        for name, held in list(self.leader.items()):  # let go: another instance takes over at its next heartbeat
            if held:
                self.leader[name] = False
                try:
                    await lease.release(self.rt.sessions, name, self.holder)
                except Exception as e:  # the store is down: the lease expires by itself
                    log.warning("provider %s: could not release the poller lease (%s)", name, type(e).__name__)


async def start_poller(rt: Runtime) -> Feature:
    from keyplane.app import Feature

    poller = Poller(rt)
    rt.features.providers = poller
    poller.start()
    await poller.start_bindings()
    from keyplane.providers.routes import ENDPOINTS

    return Feature(endpoints=list(ENDPOINTS), stop=poller.stop)
