"""The in-process snapshot of keys, projects and permissions (DESIGN.md hot-path rule 1).

The request path reads only this: a dict lookup by key digest. The snapshot is reloaded when the
control plane's revision counter moves (``meta.revision``, bumped in the same transaction as every
change); each instance polls that one row off the request path, and the instance that made a change
reloads at once. A revoked key is therefore refused everywhere within ``snapshot_poll_seconds`` plus
one reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.scopes import Permissions, parse_permissions
from keyplane.store.models import ApiKey, Meta, Organization, Project

log = logging.getLogger("keyplane.snapshot")


@dataclass(slots=True)
class KeyEntry:
    id: str
    kind: str  # proj | svc | admin
    name: str
    redacted_value: str
    project_id: str | None
    owner_user_id: str | None
    service_account_id: str | None
    permissions: Permissions
    expires_at: int | None
    revoked_at: int | None
    revoke_reason: str | None
    suspended_at: int | None
    suspend_reason: str | None

    def inactive_reason(self, now: float) -> str | None:
        """Why this key may not be used now, in words for the 401 message; None when it may."""
        if self.revoked_at is not None:
            why = f" ({self.revoke_reason})" if self.revoke_reason else ""
            return f"has been revoked{why}."
        if self.suspended_at is not None:
            why = f" ({self.suspend_reason})" if self.suspend_reason else ""
            return f"is suspended{why}. An administrator can resume it with `keyplane keys resume`."
        if self.expires_at is not None and now >= self.expires_at:
            return "has expired."
        return None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.suspended_at is not None:
            return "suspended"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(slots=True, frozen=True)
class ProjectEntry:
    id: str
    name: str
    status: str


class Snapshot:
    """Keys by digest and projects by id; replaced wholesale on reload (readers never see a half)."""

    def __init__(self) -> None:
        self.revision = -1
        self.org_id = ""
        self.org_name = ""
        self.keys: dict[str, KeyEntry] = {}
        self.keys_by_id: dict[str, KeyEntry] = {}
        self.projects: dict[str, ProjectEntry] = {}
        self.loaded = False

    async def load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            rev = (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar()
            org = (await conn.execute(select(Organization.id, Organization.name))).first()
            rows = (await conn.execute(select(*ApiKey.__table__.c))).all()
            projects = (await conn.execute(select(Project.id, Project.name, Project.status))).all()
        keys: dict[str, KeyEntry] = {}
        by_id: dict[str, KeyEntry] = {}
        for r in rows:
            e = KeyEntry(
                id=r.id, kind=r.kind, name=r.name, redacted_value=r.redacted_value,
                project_id=r.project_id, owner_user_id=r.owner_user_id,
                service_account_id=r.service_account_id,
                permissions=parse_permissions(orjson.loads(r.permissions)),
                expires_at=r.expires_at, revoked_at=r.revoked_at, revoke_reason=r.revoke_reason,
                suspended_at=r.suspended_at, suspend_reason=r.suspend_reason,
            )
            keys[r.digest] = e
            by_id[r.id] = e
        self.keys, self.keys_by_id = keys, by_id
        self.projects = {p.id: ProjectEntry(p.id, p.name, p.status) for p in projects}
        if org is not None:
            self.org_id, self.org_name = org.id, org.name
        self.revision = rev or 0
        self.loaded = True

    async def current_revision(self, engine: AsyncEngine) -> int:
        async with engine.connect() as conn:
            return (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar() or 0


class SnapshotRefresher:
    """Polls the revision off the request path and reloads on change."""

    def __init__(self, snapshot: Snapshot, engine: AsyncEngine, interval: float) -> None:
        self.snapshot = snapshot
        self.engine = engine
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            rev = await self.snapshot.current_revision(self.engine)
            if force or rev != self.snapshot.revision:
                await self.snapshot.load(self.engine)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # the store may be briefly unreachable; keep serving the last snapshot
                log.warning("snapshot refresh failed; serving the previous snapshot", exc_info=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="snapshot-refresher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class LastUsedRecorder:
    """Collects the keys used since the last flush and writes last_used_at in one batch."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def touch(self, key_id: str, now: float) -> None:
        self.pending[key_id] = int(now)

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        by_time: dict[int, list[str]] = {}
        for kid, t in batch.items():
            by_time.setdefault(t, []).append(kid)
        async with self.engine.begin() as conn:
            for t, ids in by_time.items():
                await conn.execute(update(ApiKey).where(ApiKey.id.in_(ids)).values(last_used_at=t))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.warning("last_used_at flush failed; will retry", exc_info=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="last-used-flusher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
