"""The background poller (an app.FEATURES Feature): every ``sync_interval`` seconds, each provider's sync.

A provider whose admin key variable is missing is logged and skipped; a failed sync is logged (never
the key) and retried at the next interval. In a fleet each instance polls: ingestion is idempotent and a
rule fires once per cooldown, so the cost is duplicate reads, not duplicate counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from keyplane import alerts
from keyplane.config import ProviderSection
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.metrics import ProviderCollector
from keyplane.providers.service import prices_for, rules_for, sync_provider

log = logging.getLogger("keyplane.providers")


class Poller:
    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.tasks: list[asyncio.Task[None]] = []
        self.keys: Any = None
        self.last: dict[str, dict[str, Any]] = {}
        self.metrics = ProviderCollector()
        usage_metrics = rt.extras.get("usage.metrics")  # keyplane.usage's registry: served on /metrics
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
        billing = self.rt.extras.get("billing")  # the billing feature's table, when it runs
        if getattr(billing, "prices", None) is not None and any(r.metric == "cost_usd" for r in rules):
            return billing.prices
        try:
            return await asyncio.to_thread(prices_for, self.rt.settings, rules)
        except ValueError as e:  # PriceError: the syncs go on; the dollar rules see $0 until a restart
            log.error("provider rules: no price table (%s): spend_surge and cost ceilings cannot fire", e)
            return None

    async def _loop(self, cfg: ProviderSection, conn: Connector) -> None:
        rules = rules_for(self.rt.settings)
        prices: Any = None
        priced = False
        try:
            while True:
                now = int(self.rt.clock.now())
                try:
                    if not priced:
                        prices, priced = await self._prices(rules), True
                    self.last[cfg.name] = await sync_provider(self.rt.sessions, conn, now, rules,
                                                              alerts.for_runtime(self.rt), prices)
                    async with self.rt.read() as s:
                        await self.metrics.refresh(s, cfg.name, now)
                except ProviderError as e:
                    self.metrics.failures[cfg.name] = self.metrics.failures.get(cfg.name, 0) + 1
                    log.error("provider sync failed: %s", e)
                except Exception:
                    self.metrics.failures[cfg.name] = self.metrics.failures.get(cfg.name, 0) + 1
                    log.exception("provider %s: sync failed", cfg.name)
                await asyncio.sleep(cfg.sync_interval)
        finally:
            await conn.close()

    async def start_bindings(self) -> None:
        """Projects bound to a provider project (keyplane.providers.bindings): the proxy's key map, loaded now
        and reloaded every RELOAD_SECONDS, and the rotated-out keys deleted once their grace has passed."""
        from keyplane.providers.bindings import KeyBox, UpstreamKeys

        self.keys = UpstreamKeys(self.rt.settings.file.providers, KeyBox(self.rt.settings.secret_key))
        async with self.rt.read() as s:
            await self.keys.reload(s)
        self.rt.extras["providers.keys"] = self.keys
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
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def start_poller(rt: Any) -> Any:
    from keyplane.app import Feature

    poller = Poller(rt)
    rt.extras["providers"] = poller
    poller.start()
    await poller.start_bindings()
    from keyplane.providers.routes import ENDPOINTS

    return Feature(endpoints=list(ENDPOINTS), stop=poller.stop)
