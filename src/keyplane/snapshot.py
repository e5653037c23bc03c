"""The in-process snapshot of keys, projects and permissions (DESIGN.md hot-path rule 1).

The request path reads only this: a dict lookup by key digest. The snapshot is reloaded when the
control plane's revision counter moves (``meta.revision``, bumped in the same transaction as every
change). Changes also arrive on the bus (keyplane.bus): key revocations, suspensions and resumes
and project status changes are applied from the event at once, without reading SQL, and a reload
is scheduled; each instance still polls the revision off the request path as the fallback.

Reloads never hold the event loop for long (issue 13): a full reload reads the rows with the async
driver in partitions, builds the new maps in a worker thread and swaps them in with one assignment;
an unchanged key keeps its KeyEntry object (a stream in flight compares its entry by identity), a
changed one gets a new object. When the events received since the last read name every change up
to the store's revision (``complete`` events, at most ``INCREMENTAL_MAX_IDS`` ids), the reload reads
only those keys' and projects' rows. Billing and the kill switch subscribe with :meth:`Snapshot.on_change`.
keyplane.snapshot_refresh polls the revision; keyplane.last_used records when keys were used.

Freshness: the snapshot remembers when it last confirmed it is current, by a successful poll or by
a bus event or heartbeat whose revision it has fully applied. Past ``max_staleness_seconds`` without
that, the app refuses /v1 requests with 503 rather than serve stale authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import msgspec
import orjson
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.bus.events import Event, KeyDelta, ProjectDelta
from keyplane.members import grants as members_grants
from keyplane.scopes import Permissions, parse_permissions
from keyplane.store.models import ApiKey, Meta, Organization, Project

log = logging.getLogger("keyplane.snapshot")


class KeyEntry(msgspec.Struct, gc=False):
    """One key as the request path sees it. Not tracked by the garbage collector (``gc=False``: it holds
    only strings, numbers and a shared Permissions, never a cycle), so 50,000 keys add nothing to the
    collector's full passes, which would otherwise hold the event loop for tens of milliseconds."""

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
    lineage: str | None = None  # the first key of its rotation line (None: itself)

    @property
    def budget_id(self) -> str:
        """The id its key-scope spend and rate limits are counted under, shared by its line (billing/engine.py)."""
        return self.lineage or self.id

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


class ProjectEntry(msgspec.Struct, frozen=True, gc=False):
    id: str
    name: str
    status: str


_E = TypeVar("_E", "KeyEntry", "ProjectEntry")
KeyRow = Row[*tuple[Any, ...]]  # a row of KEY_COLUMNS
PARTITION = 2_000  # rows per step of a full reload's read
INCREMENTAL_MAX_IDS = 256  # more changed ids than this: a full reload
KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.digest,
    ApiKey.kind,
    ApiKey.name,
    ApiKey.redacted_value,
    ApiKey.project_id,
    ApiKey.owner_user_id,
    ApiKey.service_account_id,
    ApiKey.permissions,
    ApiKey.expires_at,
    ApiKey.revoked_at,
    ApiKey.revoke_reason,
    ApiKey.suspended_at,
    ApiKey.suspend_reason,
    ApiKey.lineage_id,
)


def key_entry(r: KeyRow, permissions: dict[str, Permissions]) -> KeyEntry:
    """The entry of one row of KEY_COLUMNS; ``permissions`` memoizes parsing (most keys share a value)."""
    perms = permissions.get(r.permissions)
    if perms is None:
        perms = permissions[r.permissions] = parse_permissions(orjson.loads(r.permissions))
    return KeyEntry(
        id=r.id,
        kind=r.kind,
        name=r.name,
        redacted_value=r.redacted_value,
        project_id=r.project_id,
        owner_user_id=r.owner_user_id,
        service_account_id=r.service_account_id,
        permissions=perms,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        revoke_reason=r.revoke_reason,
        suspended_at=r.suspended_at,
        suspend_reason=r.suspend_reason,
        lineage=r.lineage_id,
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a full reload holds its rows: their tens of thousands of
    short-lived objects would otherwise set off a full pass over the heap, in whichever thread
    allocates, holding the event loop. They are freed by reference counting when the reload ends."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _same(old: _E | None, new: _E) -> _E:
    """The entry served so far when nothing in it changed (its identity is the proxy's change check)."""
    return old if old is not None and old == new else new


def build_keys(
    rows: Iterable[KeyRow], current: Mapping[str, KeyEntry]
) -> tuple[dict[str, KeyEntry], dict[str, KeyEntry], dict[str, str]]:
    """(by digest, by id, id -> digest) from the rows of a full reload. Runs in a worker thread: it only
    reads ``current`` (the loop may replace entries meanwhile; the reload's overlay re-applies those)."""
    keys: dict[str, KeyEntry] = {}
    by_id: dict[str, KeyEntry] = {}
    digests: dict[str, str] = {}
    permissions: dict[str, Permissions] = {}
    for r in rows:
        e = _same(current.get(r.id), key_entry(r, permissions))
        keys[r.digest] = e
        by_id[r.id] = e
        digests[r.id] = r.digest
    return keys, by_id, digests


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
        # user id -> effective admin permissions (keyplane.members.grants); every full reload rereads them
        # (a change to roles, groups or users is opaque on the bus, so it always causes a full reload).
        self.grants: dict[str, frozenset[str]] = {}
        # user id -> project id -> what their project-scoped roles grant there (members.grants.load_projects)
        self.project_grants: dict[str, dict[str, frozenset[str]]] = {}
        self.loaded = False
        self.monotonic = monotonic
        self.applied = -1  # every change up to this revision is reflected (loaded, or applied from events)
        self.fleet_revision = -1  # the highest revision any event or heartbeat announced
        self.confirmed_at = monotonic()  # when the snapshot was last known to be current
        self._digests: dict[str, str] = {}  # key id -> digest
        self._overlay: list[Event] = []  # applied events newer than the loaded revision
        # key or project id -> the revision of the event whose status its entry holds: events may arrive out of
        # order (two publishers, a slow link), and an older one must not undo a newer one (a late resume over a
        # revocation). Cleared on every reload (the rows read are at least as new as the loaded revision).
        self._status_rev: dict[tuple[str, str], int] = {}
        self._named: list[Event] = []  # complete events newer than the loaded revision
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
        """A full reload: rows read with the async driver, maps built off the loop, swapped in at once."""
        with _collector_paused():
            await self._load(engine)

    async def _load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            rev = (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar()
            org = (await conn.execute(select(Organization.id, Organization.name))).first()
            rows: list[KeyRow] = []
            result = await conn.stream(select(*KEY_COLUMNS).execution_options(yield_per=PARTITION))
            async for part in result.partitions(PARTITION):  # each partition a short step of the loop
                rows.extend(part)
            projects = (await conn.execute(select(Project.id, Project.name, Project.status))).all()
            grants = await members_grants.load(conn)
            project_grants = await members_grants.load_projects(conn)
        keys, by_id, digests = await asyncio.to_thread(build_keys, rows, self.keys_by_id)
        self.keys, self.keys_by_id, self._digests = keys, by_id, digests
        self.grants, self.project_grants = grants, project_grants
        old_projects = self.projects
        self.projects = {p.id: _same(old_projects.get(p.id), ProjectEntry(p.id, p.name, p.status)) for p in projects}
        if org is not None:
            self.org_id, self.org_name = org.id, org.name
        self._loaded(rev or 0)

    async def load_some(
        self, engine: AsyncEngine, revision: int, key_ids: Collection[str], project_ids: Collection[str]
    ) -> bool:
        """An incremental reload: only the rows of ``key_ids`` and ``project_ids``, provided the store is
        still at ``revision`` (the changes named up to it); False, having changed nothing, when it is not."""
        async with engine.connect() as conn:
            rev = (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar() or 0
            if rev != revision:
                return False
            rows = (await conn.execute(select(*KEY_COLUMNS).where(ApiKey.id.in_(key_ids)))).all() if key_ids else []
            projects = (
                (
                    await conn.execute(
                        select(Project.id, Project.name, Project.status).where(Project.id.in_(project_ids))
                    )
                ).all()
                if project_ids
                else []
            )
        found = {r.id: r for r in rows}
        for kid in key_ids:
            old_digest = self._digests.get(kid)
            row = found.get(kid)
            if old_digest is not None and (row is None or row.digest != old_digest):
                self.keys.pop(old_digest, None)  # deleted, or a new digest
            if row is None:
                self.keys_by_id.pop(kid, None)
                self._digests.pop(kid, None)
                continue
            e = _same(self.keys_by_id.get(kid), key_entry(row, {}))
            self.keys[row.digest] = self.keys_by_id[kid] = e
            self._digests[kid] = row.digest
        got = {p.id: p for p in projects}
        for pid in project_ids:
            p = got.get(pid)
            if p is None:
                self.projects.pop(pid, None)
            else:
                self.projects[pid] = _same(self.projects.get(pid), ProjectEntry(p.id, p.name, p.status))
        self._loaded(rev)
        return True

    def _loaded(self, rev: int) -> None:
        self.revision = rev
        self.loaded = True
        # Deltas newer than what was read (a lagging read) stay applied on top.
        self._overlay = sorted((ev for ev in self._overlay if ev.revision > self.revision), key=lambda e: e.revision)
        self._named = [ev for ev in self._named if ev.revision > self.revision]
        self._status_rev = {}
        for ev in self._overlay:  # in revision order, whatever order they arrived in
            self._apply_deltas(ev)
        self._advance(self.revision)
        self._changed()

    def named_changes(self, to: int) -> tuple[set[str], set[str]] | None:
        """The key and project ids changed from the loaded revision up to ``to``, when the complete events
        received name them all and they are few; None when only a full reload will do."""
        if not self.loaded or to < self.revision:
            return None
        at, keys, projects = self.revision, set[str](), set[str]()
        for ev in sorted(self._named, key=lambda e: e.first or e.revision):
            if at >= to:
                break
            if ev.revision <= at:
                continue
            if (ev.first or ev.revision) > at + 1:
                return None  # a revision nobody told us about
            keys.update(d.id for d in ev.keys)
            projects.update(d.id for d in ev.projects)
            at = ev.revision
        if at < to or len(keys) + len(projects) > INCREMENTAL_MAX_IDS:
            return None
        return keys, projects

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
            self._named.append(ev)
            self._ranges[ev.first or ev.revision] = ev.revision
            self._advance(self.applied)
        self.reload_wanted()
        self._changed()

    def _apply_deltas(self, ev: Event) -> None:
        # The newest event to name a key or project sets its status; a revocation or an archiving stands whenever
        # it arrives (neither is ever undone: a late one is still the truth).
        for d in ev.keys:
            if self._newest(("key", d.id), ev.revision) or d.revoked_at is not None:
                self._apply_key(d)
        for p in ev.projects:
            if self._newest(("project", p.id), ev.revision) or p.status != "active":
                self._apply_project(p)

    def _newest(self, what: tuple[str, str], revision: int) -> bool:
        """Whether an event of ``revision`` is the newest to set the status of ``what`` (noted if so)."""
        if self._status_rev.get(what, -1) > revision:
            return False  # a newer event set it already: this one arrived late
        self._status_rev[what] = revision
        return True

    def _apply_key(self, d: KeyDelta) -> None:
        old = self.keys_by_id.get(d.id)
        digest = self._digests.get(d.id)
        if old is None or digest is None:
            return  # a key this snapshot has not loaded yet: the reload brings it
        if (old.revoked_at, old.revoke_reason, old.suspended_at, old.suspend_reason) == (
            d.revoked_at,
            d.revoke_reason,
            d.suspended_at,
            d.suspend_reason,
        ):
            return  # already so (a delta re-applied after a reload): the entry keeps its identity
        # A new object, so that a stream in flight notices its key changed (identity check in the proxy).
        new = msgspec.structs.replace(
            old,
            revoked_at=d.revoked_at,
            revoke_reason=d.revoke_reason,
            suspended_at=d.suspended_at,
            suspend_reason=d.suspend_reason,
        )
        self.keys_by_id[d.id] = new
        self.keys[digest] = new

    def _apply_project(self, d: ProjectDelta) -> None:
        old = self.projects.get(d.id)
        if old is not None and old.status != d.status:
            self.projects[d.id] = ProjectEntry(old.id, old.name, d.status)
