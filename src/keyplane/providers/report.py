"""The hygiene report over the mirror (`keyplane providers report`): what a security review asks first."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.providers.sync import KINDS, mirror

DEFAULT_PROJECT_NAMES = ("Default project",)


def _owner(key: dict[str, Any]) -> tuple[str, str]:
    owner = key.get("owner") or {}
    kind = str(owner.get("type") or "")
    who = owner.get(kind) or {}
    return kind, str(who.get("id") or "") if isinstance(who, dict) else ""


def hygiene(objects: list[tuple[str, str, str, dict[str, Any]]], now: int, unused_days: int) -> dict[str, Any]:
    """``objects``: (kind, id, provider project id, data) of the live mirror of one provider."""
    by_kind: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for kind, oid, pid, data in objects:
        by_kind.setdefault(kind, []).append((oid, pid, data))
    users = {oid for oid, _, _ in by_kind.get("user", [])}
    projects = {oid: d for oid, _, d in by_kind.get("project", [])}
    keys = by_kind.get("api_key", [])
    cutoff = now - unused_days * 86400
    unused, orphaned, default, owners = [], [], [], set()
    for kid, pid, k in keys:
        item = {
            "id": kid,
            "project_id": pid,
            "redacted_value": k.get("redacted_value"),
            "created_at": k.get("created_at"),
            "last_used_at": k.get("last_used_at"),
        }
        last = k.get("last_used_at") or k.get("created_at") or 0
        if last < cutoff:
            unused.append(item)
        kind, who = _owner(k)
        owners.add(who)
        if kind == "user" and who not in users:
            orphaned.append({**item, "owner_user_id": who})
        if (projects.get(pid) or {}).get("name") in DEFAULT_PROJECT_NAMES:
            default.append(item)
    idle_accounts = [
        {"id": sid, "project_id": pid, "name": d.get("name")}
        for sid, pid, d in by_kind.get("service_account", [])
        if sid not in owners
    ]
    no_expiry = [
        {"id": oid, "name": d.get("name"), "redacted_value": d.get("redacted_value")}
        for oid, _, d in by_kind.get("admin_key", [])
        if not d.get("expires_at")
    ]
    no_limit, limit_unknown = [], []
    for oid, d in projects.items():
        if d.get("status") == "archived":
            continue
        item = {"id": oid, "name": d.get("name")}
        if "spend_limit" not in d:
            limit_unknown.append({**item, "reason": d.get("spend_limit_error") or "not read yet"})
        elif not d["spend_limit"]:
            no_limit.append(item)
    return {
        "unused_keys": unused,
        "keys_of_departed_users": orphaned,
        "keys_in_default_project": default,
        "service_accounts_without_keys": idle_accounts,
        "admin_keys_without_expiry": no_expiry,
        "projects_without_spend_limit": no_limit,
        "projects_spend_limit_unknown": limit_unknown,
        "unused_days": unused_days,
    }


FINDINGS = (
    "unused_keys",
    "keys_of_departed_users",
    "keys_in_default_project",
    "service_accounts_without_keys",
    "admin_keys_without_expiry",
    "projects_without_spend_limit",
    "projects_spend_limit_unknown",
)


async def report(s: AsyncSession, provider: str, now: int, unused_days: int) -> dict[str, Any]:
    """The hygiene report and the inventory summary of one provider, from its live mirror. The one function
    behind `keyplane providers report`, GET /v1/organization/providers/{name}/report and the dashboard."""
    rows = await mirror(s, provider)
    objects = [(r.kind, r.object_id, r.project_id, orjson.loads(r.data)) for r in rows]
    inventory = dict.fromkeys(KINDS, 0)
    for r in rows:
        inventory[r.kind] = inventory.get(r.kind, 0) + 1
    synced = max((r.last_seen for r in rows), default=None)
    return {
        "object": "provider.report",
        "provider": provider,
        "generated_at": now,
        "last_synced_at": synced,
        "inventory": inventory,
        **hygiene(objects, now, unused_days),
    }
