"""Prometheus metrics of the provider connector, on keyplane's /metrics (the usage feature's registry).

Ingested buckets are replaced as the provider's hours fill up, so they are exposed as gauges of the last
complete hour (per provider, project, key, model and direction) and of today's cost per project, not as
counters; plus each provider's last successful sync time and its failures. Series are capped
(``MAX_SERIES``) so that an organization with thousands of keys cannot blow up the scrape.
With PROMETHEUS_MULTIPROC_DIR set these gauges are not exposed (the multiprocess registry only takes
prometheus_client's own metric files).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.providers.models import ProviderUsage

MAX_SERIES = 5000


class ProviderCollector(Collector):
    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str, str, str, str], int] = {}
        self.cost: dict[tuple[str, str], float] = {}
        self.synced: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        t = GaugeMetricFamily("keyplane_provider_tokens_last_hour", "Tokens the provider reported for the last "
                              "complete hour, by provider, project, key, model and direction.",
                              labels=["provider", "project_id", "api_key_id", "model", "type"])
        for labels, v in self.tokens.items():
            t.add_metric(list(labels), v)
        yield t
        c = GaugeMetricFamily("keyplane_provider_cost_usd_today", "The provider's cost today (UTC), by project.",
                              labels=["provider", "project_id"])
        for where, usd in self.cost.items():
            c.add_metric(list(where), usd)
        yield c
        s = GaugeMetricFamily("keyplane_provider_last_sync_timestamp_seconds", "When the last successful sync of "
                              "each provider ended.", labels=["provider"])
        for name, at in self.synced.items():
            s.add_metric([name], at)
        yield s
        f = CounterMetricFamily("keyplane_provider_sync_failures", "Failed background syncs.", labels=["provider"])
        for name, n in self.failures.items():
            f.add_metric([name], n)
        yield f

    async def refresh(self, s: AsyncSession, provider: str, now: int) -> None:
        hour = now // 3600 * 3600 - 3600
        rows = (await s.execute(select(
            ProviderUsage.project_id, ProviderUsage.api_key_id, ProviderUsage.model,
            func.sum(ProviderUsage.input_tokens), func.sum(ProviderUsage.output_tokens)).where(
            ProviderUsage.provider == provider, ProviderUsage.start_time == hour, ProviderUsage.stream != "costs")
            .group_by(ProviderUsage.project_id, ProviderUsage.api_key_id, ProviderUsage.model))).all()
        tokens = {k: v for k, v in self.tokens.items() if k[0] != provider}
        for pid, kid, model, tin, tout in rows:
            if len(tokens) >= MAX_SERIES:
                break
            tokens[(provider, pid, kid, model, "input")] = int(tin or 0)
            tokens[(provider, pid, kid, model, "output")] = int(tout or 0)
        self.tokens = tokens
        day = now // 86400 * 86400
        costs = (await s.execute(select(ProviderUsage.project_id, func.sum(ProviderUsage.cost_micros)).where(
            ProviderUsage.provider == provider, ProviderUsage.stream == "costs", ProviderUsage.start_time == day)
            .group_by(ProviderUsage.project_id))).all()
        cost = {k: v for k, v in self.cost.items() if k[0] != provider}
        cost.update({(provider, pid): int(m or 0) / 1e6 for pid, m in costs})
        self.cost = cost
        self.synced[provider] = float(now)
