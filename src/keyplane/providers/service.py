"""One provider's whole sync (inventory, usage, rules) and the admin-key check, shared by the poller and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane.alerts import Dispatcher
from keyplane.config import ProviderSection, Settings
from keyplane.guard.rules import Rule, provider_rules
from keyplane.providers import ingest, sync
from keyplane.providers.connector import Connector
from keyplane.providers.rules import evaluate_provider

if TYPE_CHECKING:
    from keyplane.billing.prices import PriceTable


def rules_for(settings: Settings) -> list[Rule]:
    return provider_rules(settings.file.guard)


def find_provider(settings: Settings, name: str) -> ProviderSection | None:
    return next((p for p in settings.file.providers if p.name == name), None)


async def check(conn: Connector) -> dict[str, Any]:
    """Prove the admin key works and show what it can see (counts only, no object content)."""
    inv = await sync.fetch(conn)
    return {
        "object": "provider.check",
        "provider": conn.name,
        "base_url": conn.cfg.base_url,
        "ok": True,
        "visible": inv.counts(),
        "calls": conn.calls,
    }


def prices_for(settings: Settings, rules: list[Rule], always: bool = False) -> PriceTable | None:
    """The price table the provider rules estimate hourly costs with (keyplane's own: shipped prices.toml,
    prices_file, [prices.*]), or None when no provider rule counts dollars (and not ``always``: the poller
    loads it for the estimated-cost gauges too)."""
    if not always and not any(r.metric == "cost_usd" for r in rules):
        return None
    from keyplane.billing.prices import PriceTable

    return PriceTable.from_config(settings.file.prices, settings.prices_file)


async def sync_provider(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    now: int,
    rules: list[Rule],
    alerts: Dispatcher | None,
    prices: PriceTable | None = None,
) -> dict[str, Any]:
    inv = await sync.fetch(conn)
    changes = await sync.store(sessions, conn.name, inv, now)
    usage = await ingest.ingest(sessions, conn, now, conn.cfg.backfill_days)
    events = await evaluate_provider(sessions, conn, rules, now, alerts, prices)
    return {
        "object": "provider.sync",
        "provider": conn.name,
        "synced_at": now,
        "inventory": inv.counts(),
        "changes": changes,
        "usage_rows": usage,
        "events": events,
    }
