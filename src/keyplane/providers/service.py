"""One provider's whole sync (inventory, usage, rules) and the admin-key check, shared by the poller and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane import control
from keyplane.alerts import Dispatcher
from keyplane.config import Settings
from keyplane.domain import Invalid, NotFound
from keyplane.guard.rules import Rule, provider_rules
from keyplane.providers import ingest, sync
from keyplane.providers.config import ProviderSection
from keyplane.providers.connector import Connector
from keyplane.providers.models import ProviderEvent
from keyplane.providers.report import report
from keyplane.providers.rules import evaluate_provider
from keyplane.runtime import Runtime

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


# --- what the admin API (providers/routes.py) and the dashboard's Providers page read ---------------


def providers(rt: Runtime) -> list[dict[str, Any]]:
    """The configured providers and this instance's last background sync of each."""
    poller = rt.features.providers
    last = poller.last if poller is not None else {}
    return [
        {
            "object": "provider",
            "id": p.name,
            "kind": p.kind,
            "base_url": p.base_url,
            "sync_interval": p.sync_interval,
            # whether this instance holds the provider's poller lease (None: no background sync here)
            "poller_leader": poller.leader.get(p.name) if poller is not None else None,
            "last_sync": {k: v for k, v in last[p.name].items() if k != "events"} if p.name in last else None,
        }
        for p in rt.settings.file.providers
    ]


async def provider_report(rt: Runtime, name: str, unused_days: str | int = 30) -> dict[str, Any]:
    """The inventory summary and the hygiene report of one provider (``unused_days``: 1 to 3650)."""
    if find_provider(rt.settings, name) is None:
        raise NotFound(f"No provider named '{name}'.", param="name")
    try:
        days = int(unused_days)
    except ValueError:
        days = 0
    if not 1 <= days <= 3650:
        raise Invalid("'unused_days' must be an integer from 1 to 3650.", param="unused_days", code="invalid_value")
    async with rt.read() as s:
        return await report(s, name, int(rt.clock.now()), days)


async def events(rt: Runtime, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """What the provider rules did, newest first: (events, has_more)."""
    async with rt.read() as s:
        rows, more = await control.page(
            s, ProviderEvent, select(ProviderEvent), after=after, limit=limit, descending=True
        )
    return [event_json(e) for e in rows], more


def event_json(e: ProviderEvent) -> dict[str, Any]:
    return {
        "object": "provider.event",
        "id": e.id,
        "created_at": e.created_at,
        "provider": e.provider,
        "rule": e.rule,
        "kind": e.kind,
        "scope": e.scope,
        "project_id": e.project_id,
        "key_id": e.key_id,
        "mode": e.mode,
        "action": e.action,
        "dry_run": e.dry_run,
        "figures": orjson.loads(e.figures),
        "message": e.message,
    }
