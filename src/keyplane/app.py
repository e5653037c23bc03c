"""Assembles the ASGI app: the /v1 proxy, the admin API, health, metrics (and later the dashboard).

``create_app(settings)`` builds everything from explicit arguments; resources open in the ASGI
lifespan. Requests are dispatched on the path prefix with no framework in the way of the proxy.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from keyplane import errors, ids, pipeline, readiness
from keyplane.admin import store_recovered
from keyplane.bus import make_bus
from keyplane.bus.publish import Publisher, publishing_sessionmaker
from keyplane.clock import Clock, SystemClock
from keyplane.config import Settings
from keyplane.last_used import LastUsedRecorder
from keyplane.runtime import Runtime, heartbeat_seconds
from keyplane.snapshot import Snapshot
from keyplane.snapshot_refresh import SnapshotRefresher
from keyplane.store import db

log = logging.getLogger("keyplane")
# What the admin API answers: /v1/organization, and the SDK's project-scoped role calls (projects.roles,
# projects.users.roles, projects.groups.roles), which the platform serves under /v1/projects/.
_ADMIN_PREFIXES = ("/v1/organization", "/v1/projects/")

ASGIApp = Any

# Features that add steps to the request flow (keyplane.pipeline) and the admin API. Each module has
# ``async def start(rt: Runtime) -> Feature``; they start in this order, before the proxy is built,
# and stop in reverse order.
FEATURES: tuple[str, ...] = (
    "keyplane.billing",
    "keyplane.usage",
    "keyplane.guard",
    "keyplane.members",
    "keyplane.access",
    "keyplane.providers",
    "keyplane.identity",
)


@dataclass
class Feature:
    """What a feature adds: admin API endpoints, top-level ASGI routes (e.g. /metrics), a stop step,
    and its steps of the request flow (keyplane.pipeline: assembled below, in the flow's order)."""

    endpoints: list[Any] = field(default_factory=list)
    routes: dict[str, ASGIApp] = field(default_factory=dict)
    stop: Callable[[], Awaitable[None]] | None = None
    billing: pipeline.Billing | None = None  # admit before the upstream, settle after
    usage: pipeline.Usage | None = None  # record, observe
    guard: pipeline.Guard | None = None  # observe


async def send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    h = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, err: errors.APIError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    h = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    if headers:
        h.extend(headers)
    await send_json(send, err.status, err.body(), h)


def with_request_id(scope: dict[str, Any], send: Any) -> Any:
    """``send`` that adds ``x-keyplane-request-id`` to the answer (and puts the id in the scope's state,
    where the admin API's error log finds it) for the answers keyplane gives itself outside the proxy."""
    rid = ids.request_id()
    scope.setdefault("state", {})["request_id"] = rid
    header = (b"x-keyplane-request-id", rid.encode())

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(k.lower() == header[0] for k, _ in headers):
                headers.append(header)
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


def _admin_outcome(send: Any) -> Any:
    """``send`` that tells the admin API's outage log when a call went through again (a success: a 401 or
    a 404 may not have needed the store)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] < 300:
            store_recovered()
        await send(message)

    return wrapped


class KeyplaneApp:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, migrate: bool = True) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.migrate = migrate
        self.runtime: Runtime | None = None
        self._admin: ASGIApp = None
        self._proxy: ASGIApp = None
        self._web: ASGIApp = None
        self._features: list[Feature] = []
        self._routes: dict[str, ASGIApp] = {}

    async def startup(self) -> None:
        s = self.settings
        if self.migrate:  # with no statement timeout: a migration may rightly take long
            migrator = db.make_engine(s.database_url)
            try:
                await db.migrate(migrator)
            finally:
                await migrator.dispose()
        engine = db.make_engine(s.database_url, timeout=s.database_timeout_seconds)
        read_engine = db.reader(engine)
        # The invalidation bus (keyplane.bus): every committed change is published, the snapshot applies them.
        bus = make_bus(s.redis_url, s.redis_prefix, s.database_url)
        publisher = Publisher(bus)
        snapshot = Snapshot()
        bus.subscribe(snapshot.apply)
        refresher = SnapshotRefresher(
            snapshot,
            read_engine,
            s.snapshot_poll_seconds,
            bus=bus,
            origin=publisher.origin,
            heartbeat_seconds=heartbeat_seconds(s.max_staleness_seconds),
        )
        await bus.start()
        await refresher.refresh(force=True)
        rt = Runtime(
            settings=s,
            clock=self.clock,
            engine=engine,
            sessions=publishing_sessionmaker(engine, publisher),
            snapshot=snapshot,
            refresher=refresher,
            last_used=LastUsedRecorder(engine, s.last_used_flush_seconds),
            read_engine=read_engine,
            read_sessions=db.sessionmaker(read_engine),
            bus=bus,
            publisher=publisher,
        )
        self.runtime = rt
        from keyplane.admin import build_admin_app
        from keyplane.proxy import build_proxy

        for name in FEATURES:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name != name:
                    raise
                continue
            feature = await module.start(rt)
            self._features.append(feature)
            self._routes.update(feature.routes)
        # The request flow's steps, in order (DESIGN.md "The pipeline"); the proxy adds prefix routing's.
        fs = self._features
        rt.pipeline = pipeline.Pipeline(
            billing=next((f.billing for f in fs if f.billing is not None), None),
            usage=next((f.usage for f in fs if f.usage is not None), None),
            guard=next((f.guard for f in fs if f.guard is not None), None),
        )
        self._admin = build_admin_app(rt, [e for f in self._features for e in f.endpoints])
        self._proxy = await build_proxy(rt)
        from keyplane.web import build_web_app

        self._web = build_web_app(rt)
        refresher.start()
        # What start-up built (tokenizer tables, the snapshot, modules) lives as long as the process: kept out
        # of the garbage collector's full passes, which otherwise stall the event loop for tens of ms.
        gc.freeze()
        rt.last_used.start()

    async def shutdown(self) -> None:
        rt = self.runtime
        if rt is None:
            return
        close = getattr(self._proxy, "aclose", None)
        if close is not None:
            await close()
        for feature in reversed(self._features):
            if feature.stop is not None:
                try:
                    await feature.stop()
                except Exception:
                    log.exception("a feature failed to stop cleanly")
        # The alert dispatcher is shared by the features (spend alerts, the kill switch): it closes
        # after all of them, delivering what they queued while stopping.
        from keyplane import alerts

        await alerts.close_runtime(rt)
        await rt.refresher.stop()
        await rt.last_used.stop()
        if rt.publisher is not None:
            await rt.publisher.drain()
        if rt.bus is not None:
            await rt.bus.close()
        await rt.engine.dispose()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") and not path.startswith(_ADMIN_PREFIXES):
                if (rt := self.runtime) is not None and not rt.snapshot.is_fresh(self.settings.max_staleness_seconds):
                    # Cannot confirm the keys are current (partitioned): refuse rather than serve stale authority.
                    await send_error(with_request_id(scope, send), errors.stale_authority(rt.snapshot.staleness()))
                else:
                    await self._proxy(scope, receive, send)
                return
            # Everything else keyplane answers itself: every answer carries its own request id.
            send = with_request_id(scope, send)
            if path.startswith(_ADMIN_PREFIXES):
                # Starlette re-raises what its error handler already answered and logged (a bug with its
                # traceback, an outage once per change of state): the server must not log a traceback per call.
                with contextlib.suppress(Exception):
                    await self._admin(scope, receive, _admin_outcome(send))
                return
            if path == "/healthz":
                await send_json(send, 200, b'{"status":"ok"}')
                return
            if path in ("/readyz", "/readyz/control"):
                await readiness.answer(self.runtime, self.settings, send, control=path == "/readyz/control")
                return
            route = self._routes.get(path)
            if route is not None:
                await route(scope, receive, send)
                return
            if self._web is not None and path != "/v1":  # the dashboard: /, /login, /static/...
                await self._web(scope, receive, send)
                return
            await send_error(send, errors.unknown_url(scope["method"], path))
        elif kind == "websocket":  # the Realtime API (/v1/realtime): proxy/realtime.py
            from keyplane.proxy import realtime

            await realtime.serve(self.runtime, self._proxy, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.error("start-up failed: %s", e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, *, clock: Clock | None = None, migrate: bool = True) -> KeyplaneApp:
    return KeyplaneApp(settings, clock=clock, migrate=migrate)
