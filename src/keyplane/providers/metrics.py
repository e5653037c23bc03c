"""Prometheus metrics of the provider connector, on keyplane's /metrics (the usage feature's registry).

Ingested buckets are replaced as the provider's hours fill up, so they are exposed as gauges of the last
complete hour (tokens per provider, project, key, model and direction; requests and the estimated cost at
keyplane's price table per project, key and model) and of today's cost per project, not as counters; plus
each provider's last successful sync time and its failures, the provider rules' actions, and which
instance holds the poller lease. Every instance of a fleet reads the gauges from the same SQL (the
dashboard takes their ``max``); the counters count what this instance did (the dashboard sums them).
Series are capped (``MAX_SERIES``) so that an organization with thousands of keys cannot blow up the
scrape. With PROMETHEUS_MULTIPROC_DIR set these metrics are not exposed (the multiprocess registry only
takes prometheus_client's own metric files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.providers.ingest import estimated_cost
from keyplane.providers.models import ProviderUsage

if TYPE_CHECKING:
    from keyplane.billing.prices import PriceTable

MAX_SERIES = 5000


class ProviderCollector(Collector):
    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str, str, str, str], int] = {}
        self.cost: dict[tuple[str, str], float] = {}
        self.synced: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.estimated: dict[tuple[str, str, str, str], float] = {}
        self.actions: dict[tuple[str, str, str], int] = {}
        self.leader: Mapping[str, bool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        t = GaugeMetricFamily(
            "keyplane_provider_tokens_last_hour",
            "Tokens the provider reported for the last complete hour, by provider, project, key, model and direction.",
            labels=["provider", "project_id", "api_key_id", "model", "type"],
        )
        for labels, v in self.tokens.items():
            t.add_metric(list(labels), v)
        yield t
        rq = GaugeMetricFamily(
            "keyplane_provider_requests_last_hour",
            "Requests the provider reported for the last complete hour, by provider, project, key and model.",
            labels=["provider", "project_id", "api_key_id", "model"],
        )
        for labels4, n in self.requests.items():
            rq.add_metric(list(labels4), n)
        yield rq
        e = GaugeMetricFamily(
            "keyplane_provider_estimated_cost_usd_last_hour",
            "The last complete hour's tokens "
            "priced at keyplane's price table (an estimate, not the invoice), by provider, "
            "project, key and model.",
            labels=["provider", "project_id", "api_key_id", "model"],
        )
        for labels4, usd in self.estimated.items():
            e.add_metric(list(labels4), usd)
        yield e
        c = GaugeMetricFamily(
            "keyplane_provider_cost_usd_today",
            "The provider's cost today (UTC), by project.",
            labels=["provider", "project_id"],
        )
        for where, usd in self.cost.items():
            c.add_metric(list(where), usd)
        yield c
        s = GaugeMetricFamily(
            "keyplane_provider_last_sync_timestamp_seconds",
            "When the last successful sync of each provider ended.",
            labels=["provider"],
        )
        for name, at in self.synced.items():
            s.add_metric([name], at)
        yield s
        f = CounterMetricFamily("keyplane_provider_sync_failures", "Failed background syncs.", labels=["provider"])
        for name, n in self.failures.items():
            f.add_metric([name], n)
        yield f
        a = CounterMetricFamily(
            "keyplane_provider_guard_actions",
            "Firings of provider rules on this instance, by "
            "provider, rule and action (revoked, alerted, failed, none: dry run).",
            labels=["provider", "rule", "action"],
        )
        for (prov, rule, action), n in self.actions.items():
            a.add_metric([prov, rule, action], n)
        yield a
        ld = GaugeMetricFamily(
            "keyplane_provider_poller_leader",
            "1 when this instance holds the provider's poller lease (it syncs the provider), else 0.",
            labels=["provider"],
        )
        for name, held in self.leader.items():
            ld.add_metric([name], 1 if held else 0)
        yield ld

    def count_events(self, provider: str, events: Iterable[Mapping[str, Any]]) -> None:
        for ev in events:
            key = (provider, str(ev.get("rule")), str(ev.get("action")))
            self.actions[key] = self.actions.get(key, 0) + 1

    async def refresh(
        self, s: AsyncSession, provider: str, now: int, prices: PriceTable | None = None, *, synced: bool = True
    ) -> None:
        """Reload the provider's gauges from SQL; ``synced``: this instance has just synced it successfully."""
        hour = now // 3600 * 3600 - 3600
        rows = (
            await s.execute(
                select(ProviderUsage)
                .where(
                    ProviderUsage.provider == provider,
                    ProviderUsage.start_time == hour,
                    ProviderUsage.stream != "costs",
                )
                .order_by(ProviderUsage.project_id, ProviderUsage.api_key_id, ProviderUsage.model)
            )
        ).scalars()
        tokens = {k: v for k, v in self.tokens.items() if k[0] != provider}
        requests = {k: v for k, v in self.requests.items() if k[0] != provider}
        estimated = {k: v for k, v in self.estimated.items() if k[0] != provider}
        for r in rows:
            where = (provider, r.project_id, r.api_key_id, r.model)
            if where not in requests and len(requests) >= MAX_SERIES // 2:
                continue
            tokens[(*where, "input")] = tokens.get((*where, "input"), 0) + r.input_tokens
            tokens[(*where, "output")] = tokens.get((*where, "output"), 0) + r.output_tokens
            requests[where] = requests.get(where, 0) + r.requests
            estimated[where] = estimated.get(where, 0.0) + estimated_cost(r, prices) / 1e6
        self.tokens, self.requests, self.estimated = tokens, requests, estimated
        day = now // 86400 * 86400
        costs = (
            await s.execute(
                select(ProviderUsage.project_id, func.sum(ProviderUsage.cost_micros))
                .where(
                    ProviderUsage.provider == provider, ProviderUsage.stream == "costs", ProviderUsage.start_time == day
                )
                .group_by(ProviderUsage.project_id)
            )
        ).all()
        cost = {k: v for k, v in self.cost.items() if k[0] != provider}
        cost.update({(provider, pid): int(m or 0) / 1e6 for pid, m in costs})
        self.cost = cost
        if synced:
            self.synced[provider] = float(now)
