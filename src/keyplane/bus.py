"""The invalidation bus: control-plane change events, in-process, Redis pub/sub or PostgreSQL NOTIFY.

Every control-plane write bumps ``meta.revision`` in its transaction (control.bump_revision, which
notes the new value on the session). Sessions made by :func:`publishing_sessionmaker` collect what
the transaction changed and, right after it commits, publish one :class:`Event`: the revision range
it covers and, for key revocations, suspensions and resumes and project status changes, the new
status itself, so that a receiver applies it without reading SQL (snapshot.Snapshot.apply). An
event that carries everything its transaction changed is ``complete``; any other asks receivers to
reload. Instances that can read the store also publish ``heartbeat`` events with the revision they
read, which lets an instance cut off from SQL confirm it has missed nothing (docs/operations.md
"Partitions and revocation").

One bus is chosen at start (:func:`make_bus`): Redis when ``redis_url`` is set, PostgreSQL
LISTEN/NOTIFY on a PostgreSQL store without Redis, else in-process (one node; other processes on
that node poll). Polling the revision stays as the fallback in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec
from sqlalchemy import event as sa_event
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstanceState, ORMExecuteState, Session, UOWTransaction

from keyplane.periodic import cancel_and_wait
from keyplane.store.models import ApiKey, Meta, Project

log = logging.getLogger("keyplane.bus")

REVISIONS = "keyplane.revisions"  # session.info: the revision values bumped in this transaction
_CHANGES = "keyplane.changes"
_OPAQUE = "keyplane.opaque"
_KEY_STATUS = frozenset({"revoked_at", "revoke_reason", "suspended_at", "suspend_reason", "updated_at"})
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
PG_PAYLOAD_MAX = 7900  # NOTIFY payloads are limited to 8000 bytes


class KeyDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A key's status after the change: a receiver applies it as is."""

    id: str
    revoked_at: int | None = None
    revoke_reason: str | None = None
    suspended_at: int | None = None
    suspend_reason: str | None = None


class ProjectDelta(msgspec.Struct, frozen=True):
    id: str
    status: str


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """``(revision, what changed)``. ``first`` is the first revision the change covers (a
    transaction may bump the revision more than once); heartbeats carry only ``revision``."""

    revision: int
    kind: Literal["change", "heartbeat"] = "change"
    first: int = 0
    keys: tuple[KeyDelta, ...] = ()
    projects: tuple[ProjectDelta, ...] = ()
    complete: bool = False  # every change of the transaction is in keys/projects: no reload needed
    origin: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(ev: Event) -> bytes:
    return _encoder.encode(ev)


def decode(data: bytes | str) -> Event | None:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        log.warning("bus: ignored a malformed event")
        return None


Callback = Callable[[Event], None]


class Bus(Protocol):
    name: str

    async def start(self) -> None: ...

    async def publish(self, event: Event) -> None:
        """Send to every subscriber of every instance (this one included). Raises when it cannot."""
        ...

    def subscribe(self, callback: Callback) -> None:
        """``callback(event)`` runs on the event loop for every event received; it must not block."""
        ...

    async def close(self) -> None: ...


class _Subscribers:
    def __init__(self) -> None:
        self._callbacks: list[Callback] = []

    def subscribe(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def deliver(self, ev: Event) -> None:
        for cb in self._callbacks:
            try:
                cb(ev)
            except Exception:
                log.exception("bus: a subscriber failed on revision %s", ev.revision)


class InProcessBus(_Subscribers):
    """One node: events reach the subscribers of this process only."""

    name = "in-process"

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    async def close(self) -> None:
        return None


class RedisBus(_Subscribers):
    """Redis pub/sub on ``<redis_prefix>:bus``; the subscriber reconnects on its own."""

    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self.channel = f"{prefix}:bus"
        self._redis: Any = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._sub: Any = aioredis.from_url(url, socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="bus-redis")

    async def publish(self, event: Event) -> None:
        await self._redis.publish(self.channel, encode(event))

    async def _listen(self) -> None:
        delay, failing = 0.5, False
        while True:
            try:
                async with self._sub.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(self.channel)
                    self.subscribed.set()
                    if failing:
                        log.info("bus: Redis subscription restored")
                    delay, failing = 0.5, False
                    while True:
                        msg = await ps.get_message(timeout=1.0)
                        if msg is not None and msg.get("type") == "message":
                            ev = decode(msg["data"])
                            if ev is not None:
                                self.deliver(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.subscribed.clear()
                if not failing:  # one line per state change, not one per retry
                    log.warning("bus: Redis subscription lost (%s); retrying, polling meanwhile", type(e).__name__)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for client in (self._redis, self._sub):
            with contextlib.suppress(Exception):
                await client.aclose()


def asyncpg_dsn(database_url: str) -> str:
    """postgresql+asyncpg://... -> postgresql://... (asyncpg's own form)."""
    return "postgresql://" + database_url.split("://", 1)[1]


class PgNotifyBus(_Subscribers):
    """PostgreSQL LISTEN/NOTIFY on a PostgreSQL store without Redis."""

    name = "postgres"

    def __init__(self, database_url: str, channel: str = "keyplane_bus") -> None:
        super().__init__()
        self.dsn = asyncpg_dsn(database_url)
        self.channel = channel
        self._listener: Any = None
        self._sender: Any = None
        self._task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="bus-postgres")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        ev = decode(payload)
        if ev is not None:
            self.deliver(ev)

    async def _listen(self) -> None:
        import asyncpg

        delay, failing = 0.5, False
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    await conn.add_listener(self.channel, self._on_notify)
                    self.subscribed.set()
                    if failing:
                        log.info("bus: PostgreSQL LISTEN restored")
                    delay, failing = 0.5, False
                    while not conn.is_closed():
                        await asyncio.sleep(1.0)
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)  # notices a dead connection
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        conn.terminate()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    log.warning("bus: PostgreSQL LISTEN lost (%s); retrying, polling meanwhile", type(e).__name__)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def publish(self, event: Event) -> None:
        import asyncpg

        payload = encode(event)
        if len(payload) > PG_PAYLOAD_MAX:  # too big for NOTIFY: receivers reload instead
            payload = encode(Event(revision=event.revision, first=event.first, origin=event.origin))
        async with self._send_lock:
            if self._sender is None or self._sender.is_closed():
                self._sender = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await asyncio.wait_for(
                    self._sender.execute("SELECT pg_notify($1, $2)", self.channel, payload.decode()), 5
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    self._sender.terminate()
                self._sender = None
                raise

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender.close(), 2)


def bus_kind(redis_url: str, database_url: str) -> str:
    if redis_url:
        return "redis"
    if database_url.startswith("postgresql"):
        return "postgres"
    return "in-process"


def make_bus(redis_url: str, redis_prefix: str, database_url: str) -> Bus:
    kind = bus_kind(redis_url, database_url)
    if kind == "redis":
        return RedisBus(redis_url, redis_prefix)
    if kind == "postgres":
        return PgNotifyBus(database_url)
    return InProcessBus()


# --- publishing after commit ---------------------------------------------------------------------


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
            if isinstance(obj, ApiKey) and changed <= _KEY_STATUS:
                changes[("key", obj.id)] = KeyDelta(
                    obj.id, obj.revoked_at, obj.revoke_reason, obj.suspended_at, obj.suspend_reason
                )
                continue
            if isinstance(obj, Project) and changed <= _PROJECT_STATUS:
                changes[("project", obj.id)] = ProjectDelta(obj.id, obj.status)
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
