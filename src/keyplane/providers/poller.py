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
from keyplane.providers.service import rules_for, sync_provider

log = logging.getLogger("keyplane.providers")


class Poller:
    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.tasks: list[asyncio.Task[None]] = []
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

    async def _loop(self, cfg: ProviderSection, conn: Connector) -> None:
        rules = rules_for(self.rt.settings)
        try:
            while True:
                now = int(self.rt.clock.now())
                try:
                    self.last[cfg.name] = await sync_provider(self.rt.sessions, conn, now, rules,
                                                              alerts.for_runtime(self.rt))
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
    from keyplane.providers.routes import ENDPOINTS

    return Feature(endpoints=list(ENDPOINTS), stop=poller.stop)
