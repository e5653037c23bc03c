"""The kill switch on provider keys: guard rules with scope provider_key / provider_project, evaluated by
keyplane.guard's own detectors over the ingested hourly buckets, after every usage poll.

Each rule is evaluated twice per poll: on the window ending with the last complete hour and on the one
ending with the current (partial) hour, so a leak is caught within one poll interval of being reported.
``mode = "revoke"`` deletes the key at the provider (DELETE /organization/projects/{p}/api_keys/{k});
for provider_project, every key of the project. Each firing: a provider_events row, an audit entry
(``provider.guard.fired``), a WARNING log line and an alert (``guard.provider.fired``) with its figures.
A rule fires at most once per entity per cooldown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane import control, ids
from keyplane.alerts import Alert, Dispatcher
from keyplane.guard.detectors import Finding, evaluate
from keyplane.guard.rules import Rule, format_duration
from keyplane.guard.windows import Counters, View
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.ingest import HOUR, hourly_by_key
from keyplane.providers.models import ProviderEvent, ProviderObject

if TYPE_CHECKING:
    from keyplane.billing.prices import PriceTable

log = logging.getLogger("keyplane.providers")


@dataclass(frozen=True, slots=True)
class Firing:
    finding: Finding
    project_id: str
    key_ids: list[str]


def _sum(hours: dict[int, Counters], lo: int, hi: int) -> Counters:
    out: Counters = {"t": 0, "r": 0, "c": 0}
    for start, c in hours.items():
        if lo <= start < hi:
            for k, v in c.items():
                out[k] = out.get(k, 0) + v
    return out


def view_at(hours: dict[int, Counters], window: int, n: int, end: int) -> View:
    """The detectors' view of an hourly series: the window ending at ``end`` and up to ``n`` complete
    windows before it, only those after the series' first bucket (a new key has no rhythm yet)."""
    first = min(hours) if hours else None
    periods: list[Counters] = []
    for i in range(n, 0, -1):
        lo = end - (i + 1) * window
        if first is not None and lo >= first:
            periods.append(_sum(hours, lo, lo + window))
    return View(current=_sum(hours, end - window, end), periods=periods, first_seen=float(first) if first else None)


def find(rules: list[Rule], series: dict[tuple[str, str], dict[int, Counters]], now: int) -> list[Firing]:
    """What the rules find in the hourly series (pure: tests replay a week through it)."""
    by_project: dict[str, dict[int, Counters]] = {}
    for (pid, _), hours in series.items():
        agg = by_project.setdefault(pid, {})
        for start, c in hours.items():
            slot = agg.setdefault(start, {"t": 0, "r": 0, "c": 0})
            for k, v in c.items():
                slot[k] = slot.get(k, 0) + v
    out: list[Firing] = []
    ends = (now // HOUR * HOUR, now // HOUR * HOUR + HOUR)  # the last complete hour, then the current one
    for rule in rules:
        window, n = int(rule.window_s), rule.spec.baseline_periods
        entities: list[tuple[str, str, dict[int, Counters]]] = (
            [(pid, kid, h) for (pid, kid), h in series.items() if kid]
            if rule.scope == "provider_key"
            else [(pid, "", h) for pid, h in by_project.items() if pid]
        )
        for pid, kid, hours in entities:
            for end in ends:
                f = evaluate(rule, view_at(hours, window, n, end), kid or pid)
                if f is not None:
                    out.append(Firing(f, pid, [kid] if kid else []))
                    break
    return out


async def _recent(s: AsyncSession, provider: str, rule: Rule, pid: str, kid: str, now: int) -> bool:
    q = select(ProviderEvent.created_at).where(
        ProviderEvent.provider == provider,
        ProviderEvent.rule == rule.name,
        ProviderEvent.key_id == kid,
        ProviderEvent.project_id == pid,
        ProviderEvent.created_at > now - max(rule.cooldown_s, 1),
    )
    return (await s.execute(q.limit(1))).first() is not None


async def evaluate_provider(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    rules: list[Rule],
    now: int,
    alerts: Dispatcher | None,
    prices: PriceTable | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the provider rules on the stored buckets and act; returns the events written (as JSON).
    ``prices`` gives each hourly bucket its estimated cost (spend_surge, cost_usd ceilings): without it
    a cost rule sees $0 and never fires."""
    if not rules:
        return []
    longest = max(int(r.window_s) * (r.spec.baseline_periods + 2) for r in rules)
    async with sessions() as s:
        series = await hourly_by_key(s, conn.name, now - longest, prices)
        live = {
            (o.project_id, o.object_id)
            for o in (
                await s.execute(
                    select(ProviderObject).where(
                        ProviderObject.provider == conn.name,
                        ProviderObject.kind == "api_key",
                        ProviderObject.removed_at.is_(None),
                    )
                )
            ).scalars()
        }
    events: list[dict[str, Any]] = []
    for firing in find(rules, series, now):
        rule, pid = firing.finding.rule, firing.project_id
        kid = firing.key_ids[0] if firing.key_ids else ""
        async with sessions() as s:
            if await _recent(s, conn.name, rule, pid, kid, now):
                continue
        targets = firing.key_ids if firing.key_ids else sorted(k for p, k in live if p == pid)
        targets = [k for k in targets if (pid, k) in live]
        if not targets and rule.mode == "revoke" and not rule.dry_run:
            continue  # already gone at the provider
        events.append(await _act(sessions, conn, firing, targets, now, alerts))
    return events


async def _act(
    sessions: async_sessionmaker[AsyncSession],
    conn: Connector,
    firing: Firing,
    targets: list[str],
    now: int,
    alerts: Dispatcher | None,
) -> dict[str, Any]:
    f = firing.finding
    rule = f.rule
    action, done, failed = "none", [], []
    if rule.dry_run:
        pass
    elif rule.mode == "alert":
        action = "alerted"
    else:
        for kid in targets:
            try:
                await conn.delete_key(firing.project_id, kid)
                done.append(kid)
            except ProviderError as e:
                if e.status == 404:
                    done.append(kid)  # already deleted
                else:
                    failed.append(kid)
                    log.error("provider %s: could not revoke key %s: %s", conn.name, kid, e)
        action = "failed" if failed else "revoked"
    figures = {
        **f.figures,
        "provider": conn.name,
        "project_id": firing.project_id,
        "keys": targets,
        "revoked": done,
        "failed": failed,
    }
    ev_id = ids.new_id("pevt_")
    message = f"provider {conn.name}: rule {rule.name} ({f.summary})"
    async with sessions() as s, s.begin():
        actor = control.Actor("guard_rule", rule.name, {"name": rule.name, "kind": rule.kind, "event_id": ev_id})
        await control.audit(
            s,
            actor,
            "provider.guard.fired",
            {
                "id": ev_id,
                "provider": conn.name,
                "rule": {
                    "name": rule.name,
                    "kind": rule.kind,
                    "scope": rule.scope,
                    "window": format_duration(rule.window_s),
                    "threshold": rule.threshold,
                    "mode": rule.mode,
                },
                "action": action,
                "dry_run": rule.dry_run,
                "figures": figures,
                "message": message,
            },
            resource_id=f.entity_id,
            at=now,
        )
        if done:
            rows = (
                await s.execute(
                    select(ProviderObject).where(
                        ProviderObject.provider == conn.name,
                        ProviderObject.kind == "api_key",
                        ProviderObject.object_id.in_(done),
                    )
                )
            ).scalars()
            for row in rows:
                row.removed_at = now
        s.add(
            ProviderEvent(
                id=ev_id,
                created_at=now,
                provider=conn.name,
                rule=rule.name,
                kind=rule.kind,
                scope=rule.scope,
                project_id=firing.project_id,
                key_id=targets[0] if firing.key_ids else "",
                mode=rule.mode,
                action=action,
                dry_run=rule.dry_run,
                figures=orjson.dumps(figures).decode(),
                message=message,
            )
        )
    verb = "would have revoked (dry run)" if rule.dry_run and rule.mode == "revoke" else action
    log.warning(
        "provider kill switch: rule %s (%s) %s %s %s (project %s): %s; figures %s",
        rule.name,
        rule.kind,
        verb,
        "key" if firing.key_ids else "project",
        f.entity_id,
        firing.project_id,
        f.summary,
        orjson.dumps(figures).decode(),
    )
    if alerts is not None:
        head = (
            f"[dry run] provider rule {rule.name} fired on" if rule.dry_run else f"provider rule {rule.name} {action}"
        )
        alerts.send(
            Alert(
                "guard.provider.fired",
                f"{head} {conn.name} {f.entity_id}: {f.summary}",
                {
                    "provider": conn.name,
                    "rule": {"name": rule.name, "kind": rule.kind, "scope": rule.scope},
                    "figures": figures,
                    "action": action,
                    "dry_run": rule.dry_run,
                    "event_id": ev_id,
                },
                severity="critical" if action in ("revoked", "failed") else "warning",
                dedup_key=f"provider:{conn.name}:{rule.name}:{f.entity_id}",
                created_at=now,
            )
        )
    return {
        "id": ev_id,
        "rule": rule.name,
        "scope": rule.scope,
        "entity": f.entity_id,
        "project_id": firing.project_id,
        "action": action,
        "dry_run": rule.dry_run,
        "figures": figures,
        "message": message,
    }
