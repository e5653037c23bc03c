"""The in-process snapshot of keys, projects and permissions (DESIGN.md hot-path rule 1).

The request path reads only this: a dict lookup by key digest. The snapshot is reloaded when the
control plane's revision counter moves (``meta.revision``, bumped in the same transaction as every
change). Changes also arrive on the bus (keyplane.bus): key revocations, suspensions and resumes
and project status changes are applied from the event at once, without reading SQL, and a reload
is scheduled; each instance still polls the revision off the request path as the fallback.

Freshness: the snapshot remembers when it last confirmed it is current, by a successful poll or by
a bus event or heartbeat whose revision it has fully applied. Past ``max_staleness_seconds`` without
that, the app refuses /v1 requests with 503 rather than serve stale authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.bus import Bus, Event, KeyDelta, ProjectDelta
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
    """Keys by digest and projects by id; replaced wholesale on reload (readers never see a half),
    with bus deltas applied on top until a reload has caught up with them."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.revision = -1  # the revision last loaded from SQL
        self.org_id = ""
        self.org_name = ""
        self.keys: dict[str, KeyEntry] = {}
        self.keys_by_id: dict[str, KeyEntry] = {}
        self.projects: dict[str, ProjectEntry] = {}
        self.loaded = False
        self.monotonic = monotonic
        self.applied = -1  # every change up to this revision is reflected (loaded, or applied from events)
        self.fleet_revision = -1  # the highest revision any event or heartbeat announced
        self.confirmed_at = monotonic()  # when the snapshot was last known to be current
        self._digests: dict[str, str] = {}  # key id -> digest
        self._overlay: list[Event] = []  # applied events newer than the loaded revision
        self._ranges: dict[int, int] = {}  # complete events received out of order: first -> last
        self._listeners: list[Callable[[], None]] = []
        self.reload_wanted: Callable[[], None] = lambda: None  # set by the refresher

    def on_change(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every reload or applied delta (billing and the kill switch may subscribe)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for cb in self._listeners:
            try:
                cb()
            except Exception:
                log.exception("snapshot change listener failed")

    async def load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            rev = (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar()
            org = (await conn.execute(select(Organization.id, Organization.name))).first()
            rows = (await conn.execute(select(*ApiKey.__table__.c))).all()
            projects = (await conn.execute(select(Project.id, Project.name, Project.status))).all()
        keys: dict[str, KeyEntry] = {}
        by_id: dict[str, KeyEntry] = {}
        digests: dict[str, str] = {}
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
            digests[r.id] = r.digest
        self.keys, self.keys_by_id, self._digests = keys, by_id, digests
        self.projects = {p.id: ProjectEntry(p.id, p.name, p.status) for p in projects}
        if org is not None:
            self.org_id, self.org_name = org.id, org.name
        self.revision = rev or 0
        self.loaded = True
        # Deltas newer than what was read (a lagging read) stay applied on top.
        self._overlay = [ev for ev in self._overlay if ev.revision > self.revision]
        for ev in self._overlay:
            self._apply_deltas(ev)
        self._advance(self.revision)
        self._changed()

    async def current_revision(self, engine: AsyncEngine) -> int:
        async with engine.connect() as conn:
            return (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar() or 0

    # --- bus events and freshness ----------------------------------------------------------------

    def confirm(self) -> None:
        """The snapshot is known to be current now (a successful poll of the store)."""
        self.confirmed_at = self.monotonic()

    def staleness(self) -> float:
        """Seconds since the snapshot was last confirmed current."""
        return self.monotonic() - self.confirmed_at

    def is_fresh(self, bound: float) -> bool:
        return bound <= 0 or self.monotonic() - self.confirmed_at <= bound

    def _advance(self, to: int) -> None:
        self.applied = max(self.applied, to)
        while True:
            nxt = [first for first in self._ranges if first <= self.applied + 1]
            if not nxt:
                break
            for first in nxt:
                self.applied = max(self.applied, self._ranges.pop(first))
        if self.applied >= self.fleet_revision:
            self.confirm()

    def apply(self, ev: Event) -> None:
        """A bus event (runs on the event loop: a few dict writes per changed key)."""
        self.fleet_revision = max(self.fleet_revision, ev.revision)
        if ev.kind == "heartbeat":
            if ev.revision <= self.applied:
                self.confirm()
            else:
                self.reload_wanted()
            return
        if ev.revision <= self.applied:
            if self.applied >= self.fleet_revision:
                self.confirm()
            return
        if ev.keys or ev.projects:
            self._apply_deltas(ev)
            self._overlay.append(ev)
        if ev.complete:
            self._ranges[ev.first or ev.revision] = ev.revision
            self._advance(self.applied)
        self.reload_wanted()
        self._changed()

    def _apply_deltas(self, ev: Event) -> None:
        for d in ev.keys:
            self._apply_key(d)
        for p in ev.projects:
            self._apply_project(p)

    def _apply_key(self, d: KeyDelta) -> None:
        old = self.keys_by_id.get(d.id)
        digest = self._digests.get(d.id)
        if old is None or digest is None:
            return  # a key this snapshot has not loaded yet: the reload brings it
        # A new object, so that a stream in flight notices its key changed (identity check in the proxy).
        new = dataclasses.replace(old, revoked_at=d.revoked_at, revoke_reason=d.revoke_reason,
                                  suspended_at=d.suspended_at, suspend_reason=d.suspend_reason)
        self.keys_by_id[d.id] = new
        self.keys[digest] = new

    def _apply_project(self, d: ProjectDelta) -> None:
        old = self.projects.get(d.id)
        if old is not None:
            self.projects[d.id] = ProjectEntry(old.id, old.name, d.status)


class SnapshotRefresher:
    """Polls the revision off the request path and reloads on change (or at once when the bus asks);
    after each successful poll it publishes a heartbeat carrying the revision it read."""

    def __init__(self, snapshot: Snapshot, engine: AsyncEngine, interval: float, *, bus: Bus | None = None,
                 origin: str = "", heartbeat_seconds: float = 1.0, timeout: float = 5.0) -> None:
        self.snapshot = snapshot
        self.engine = engine
        self.interval = interval
        self.bus = bus
        self.origin = origin
        self.heartbeat_seconds = heartbeat_seconds
        self.timeout = max(timeout, interval)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._beat_at = 0.0
        self._beat: asyncio.Task[None] | None = None
        self._failing = False
        snapshot.reload_wanted = self._wake.set

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            rev = await self.snapshot.current_revision(self.engine)
            if force or rev != self.snapshot.revision:
                await self.snapshot.load(self.engine)
            self.snapshot.confirm()
        self._heartbeat(rev)

    def _heartbeat(self, rev: int) -> None:
        now = time.monotonic()
        if self.bus is None or now - self._beat_at < self.heartbeat_seconds or (self._beat and not self._beat.done()):
            return
        self._beat_at = now
        self._beat = asyncio.get_running_loop().create_task(self._send_beat(rev))

    async def _send_beat(self, rev: int) -> None:
        assert self.bus is not None
        with contextlib.suppress(Exception):  # the publisher logs bus trouble; a lost beat is harmless
            await asyncio.wait_for(self.bus.publish(Event(revision=rev, kind="heartbeat", origin=self.origin)), 2)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await asyncio.wait_for(self.refresh(), self.timeout)
                if self._failing:
                    log.info("snapshot refresh works again")
                self._failing = False
            except Exception as e:  # the store may be unreachable; keep serving the last snapshot
                if not self._failing:  # one line per state change, not one per poll
                    log.warning("snapshot refresh failed (%s); serving the previous snapshot", type(e).__name__)
                self._failing = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="snapshot-refresher")

    async def stop(self) -> None:
        for task in (self._task, self._beat):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


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
