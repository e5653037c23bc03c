"""Publishing after commit: sessions that collect what a transaction changed and publish one
:class:`~keyplane.bus.events.Event` per committed control-plane transaction, through a :class:`Publisher`."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstanceState, ORMExecuteState, Session, UOWTransaction

from keyplane.bus.base import Bus
from keyplane.bus.events import Event, KeyDelta, ProjectDelta
from keyplane.store.models import ApiKey, Meta, Project

log = logging.getLogger("keyplane.bus")

REVISIONS = "keyplane.revisions"  # session.info: the revision values bumped in this transaction
_CHANGES = "keyplane.changes"
_OPAQUE = "keyplane.opaque"
_KEY_STATUS = frozenset({"revoked_at", "revoke_reason", "suspended_at", "suspend_reason", "updated_at"})
_KEY_STATUS_SET = _KEY_STATUS - {"updated_at"}  # what a KeyDelta carries
_PROJECT_STATUS = frozenset({"status", "archived_at"})
# Tables a transaction may write next to a change that receivers do not need to serve requests.
# Tables whose rows the request path never reads: writing them publishes no change for the snapshot.
_RECORD_ONLY = frozenset(
    {
        "meta",
        "audit_logs",
        "guard_events",
        "web_session_ends",
        "web_totp_steps",
        "web_login_throttle",
        "project_users",
        "invites",
        "access_expiry_notices",
        "provider_mirror",
        "provider_history",
        "provider_usage",
        "provider_cursors",
        "provider_events",
    }
)


class Publisher:
    """Publishes each committed change; a failed publish is logged (receivers poll as the fallback)."""

    def __init__(self, bus: Bus, origin: str | None = None) -> None:
        self.bus = bus
        self.origin = origin or secrets.token_hex(6)
        self._pending: set[asyncio.Task[None]] = set()
        self._failing = False

    def committed(self, ev: Event) -> None:
        task = asyncio.get_running_loop().create_task(self._send(ev))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, ev: Event) -> None:
        try:
            await asyncio.wait_for(self.bus.publish(ev), 5)
            if self._failing:
                log.info("bus: publishing on %s works again", self.bus.name)
            self._failing = False
        except Exception as e:
            if not self._failing:
                log.warning(
                    "bus: could not publish on %s (%s); other instances will poll", self.bus.name, type(e).__name__
                )
            self._failing = True

    async def drain(self) -> None:
        """Wait for what was published so far (the CLI before it exits; the admin API before it answers)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def _collect(session: Session, _ctx: UOWTransaction) -> None:
    """after_flush: what this flush changed, while attribute history is still there."""
    changes: dict[tuple[str, str], KeyDelta | ProjectDelta] = session.info.setdefault(_CHANGES, {})
    for obj in (*session.new, *session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", "") in _RECORD_ONLY:
            continue
        if obj in session.dirty and isinstance(obj, ApiKey | Project):
            state: InstanceState[ApiKey | Project] = inspect(obj)
            changed = {a.key for a in state.attrs if a.history.has_changes()}
            if not changed:
                continue
            # A status change travels as a delta even when the row changed otherwise too (a rotation revokes the
            # old value and notes ``rotated_to``): an instance cut from SQL applies it at once, and the rest of
            # the change makes the event opaque (receivers reload).
            if isinstance(obj, ApiKey):
                if changed <= _KEY_STATUS or changed & _KEY_STATUS_SET:
                    changes[("key", obj.id)] = KeyDelta(
                        obj.id, obj.revoked_at, obj.revoke_reason, obj.suspended_at, obj.suspend_reason
                    )
                if changed <= _KEY_STATUS:
                    continue
            if isinstance(obj, Project):
                if changed & _PROJECT_STATUS:
                    changes[("project", obj.id)] = ProjectDelta(obj.id, obj.status)
                if changed <= _PROJECT_STATUS:
                    continue
        session.info[_OPAQUE] = True


def _statement(state: ORMExecuteState) -> None:
    """do_orm_execute: a bulk UPDATE/DELETE/INSERT is a change the flush never sees."""
    if state.is_update or state.is_delete or state.is_insert:
        mapper = state.bind_mapper
        if mapper is None or mapper.class_ is not Meta:
            state.session.info[_OPAQUE] = True


def _forget(session: Session, *_: object) -> None:
    for name in (REVISIONS, _CHANGES, _OPAQUE):
        session.info.pop(name, None)


def event_of(info: dict[str, Any], origin: str) -> Event | None:
    """The event a committed transaction publishes; None when it did not bump the revision."""
    revisions: list[int] = info.get(REVISIONS) or []
    if not revisions:
        return None
    changes: dict[tuple[str, str], KeyDelta | ProjectDelta] = info.get(_CHANGES) or {}
    keys = tuple(d for d in changes.values() if isinstance(d, KeyDelta))
    projects = tuple(d for d in changes.values() if isinstance(d, ProjectDelta))
    return Event(
        revision=max(revisions),
        first=min(revisions),
        keys=keys,
        projects=projects,
        complete=bool(changes) and not info.get(_OPAQUE),
        origin=origin,
    )


def publishing_sessionmaker(engine: AsyncEngine, publisher: Publisher) -> async_sessionmaker[AsyncSession]:
    """Sessions whose committed control-plane changes are published on ``publisher``'s bus.

    A Session class of its own per maker, so that two runtimes in one process never share listeners."""
    cls: type[Session] = type("PublishingSession", (Session,), {})

    def after_commit(session: Session) -> None:
        ev = event_of(session.info, publisher.origin)
        _forget(session)
        if ev is not None:
            publisher.committed(ev)

    sa_event.listen(cls, "after_flush", _collect)
    sa_event.listen(cls, "do_orm_execute", _statement)
    sa_event.listen(cls, "after_commit", after_commit)
    sa_event.listen(cls, "after_rollback", _forget)
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=cls)
