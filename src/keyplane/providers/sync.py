"""Inventory sync: the provider's projects, users, service accounts, project and admin API keys, mirrored.

The mirror is read-only (nothing in keyplane writes to it but this sync) and keeps history: each object
added, changed (``last_used_at`` aside, which moves with every call) or removed is a ``provider_history``
row. Objects that disappear keep their row with ``removed_at`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.models import ProviderChange, ProviderObject

KINDS = ("project", "user", "service_account", "api_key", "admin_key")
_VOLATILE = ("last_used_at",)


@dataclass
class Inventory:
    """What one fetch saw: (kind, id) -> (provider project id or '', the object)."""

    objects: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for kind, _ in self.objects:
            out[kind] += 1
        return out


async def fetch(conn: Connector) -> Inventory:
    inv = Inventory()
    projects = await conn.list_all("/organization/projects")
    for p in projects:
        inv.objects[("project", str(p["id"]))] = ("", p)
    for u in await conn.list_all("/organization/users"):
        inv.objects[("user", str(u["id"]))] = ("", u)
    for k in await conn.list_all("/organization/admin_api_keys"):
        inv.objects[("admin_key", str(k["id"]))] = ("", k)
    limits_refused: str | None = None
    for p in projects:
        if p.get("status") == "archived":
            continue
        pid = str(p["id"])
        # The project's hard spend limit rides on its mirrored object: ``spend_limit`` is the provider's
        # project.spend_limit or None (none set); when the call is refused it is absent and
        # ``spend_limit_error`` says why (the report lists the project as unknown, not as unlimited).
        if limits_refused is None:
            try:
                p["spend_limit"] = await conn.spend_limit(pid)
            except ProviderError as e:
                if e.status not in (400, 403, 404):
                    raise
                limits_refused = f"GET /organization/projects/{{id}}/spend_limit answered {e.status}"
        if limits_refused is not None:
            p["spend_limit_error"] = limits_refused
        for sa in await conn.list_all(f"/organization/projects/{pid}/service_accounts"):
            inv.objects[("service_account", str(sa["id"]))] = (pid, sa)
        for k in await conn.list_all(f"/organization/projects/{pid}/api_keys"):
            inv.objects[("api_key", str(k["id"]))] = (pid, k)
    return inv


def _stable(data: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in data.items() if k not in _VOLATILE}, option=orjson.OPT_SORT_KEYS)


async def store(sessions: async_sessionmaker[AsyncSession], provider: str, inv: Inventory, now: int) -> dict[str, int]:
    """Apply one fetch to the mirror; returns how many objects were added, changed and removed."""
    stats = {"added": 0, "changed": 0, "removed": 0}
    async with sessions() as s, s.begin():
        rows = {
            (r.kind, r.object_id): r
            for r in (await s.execute(select(ProviderObject).where(ProviderObject.provider == provider))).scalars()
        }
        for (kind, oid), (pid, data) in inv.objects.items():
            text = orjson.dumps(data).decode()
            row = rows.get((kind, oid))
            if row is None:
                s.add(
                    ProviderObject(
                        provider=provider,
                        kind=kind,
                        object_id=oid,
                        project_id=pid,
                        data=text,
                        first_seen=now,
                        last_seen=now,
                    )
                )
                s.add(ProviderChange(provider=provider, kind=kind, object_id=oid, change="added", at=now, data=text))
                stats["added"] += 1
                continue
            if row.removed_at is not None or _stable(orjson.loads(row.data)) != _stable(data):
                s.add(ProviderChange(provider=provider, kind=kind, object_id=oid, change="changed", at=now, data=text))
                stats["changed"] += 1
            row.data, row.project_id, row.last_seen, row.removed_at = text, pid, now, None
        for key, row in rows.items():
            if key not in inv.objects and row.removed_at is None:
                row.removed_at = now
                s.add(
                    ProviderChange(
                        provider=provider,
                        kind=row.kind,
                        object_id=row.object_id,
                        change="removed",
                        at=now,
                        data=row.data,
                    )
                )
                stats["removed"] += 1
    return stats


async def mirror(s: AsyncSession, provider: str | None = None, *, live: bool = True) -> list[ProviderObject]:
    q = select(ProviderObject).order_by(ProviderObject.provider, ProviderObject.kind, ProviderObject.object_id)
    if provider is not None:
        q = q.where(ProviderObject.provider == provider)
    if live:
        q = q.where(ProviderObject.removed_at.is_(None))
    return list((await s.execute(q)).scalars())


async def live_api_keys(s: AsyncSession) -> list[ProviderObject]:
    """Every mirrored API key not removed at its provider, of every provider (in no particular order)."""
    return list(
        (
            await s.execute(
                select(ProviderObject).where(ProviderObject.kind == "api_key", ProviderObject.removed_at.is_(None))
            )
        ).scalars()
    )


async def mirrored_key(s: AsyncSession, provider: str, project_id: str, key_id: str) -> ProviderObject | None:
    """One mirrored API key of a provider project (removed or not), or None."""
    return (
        await s.execute(
            select(ProviderObject).where(
                ProviderObject.provider == provider,
                ProviderObject.kind == "api_key",
                ProviderObject.object_id == key_id,
                ProviderObject.project_id == project_id,
            )
        )
    ).scalar()


async def object_at(s: AsyncSession, seq: int) -> ProviderObject | None:
    """The mirrored object of that row number, or None (to read it again in another transaction)."""
    return (await s.execute(select(ProviderObject).where(ProviderObject.seq == seq))).scalar()
