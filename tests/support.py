"""Test support: a real keyplane server on a free port, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from keyplane import control, http_protocol
from keyplane.app import KeyplaneApp, create_app
from keyplane.clock import Clock
from keyplane.config import Settings, load_settings
from keyplane.store import db

PG_ADMIN_DSN = os.environ.get("KEYPLANE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_template_lock = threading.Lock()
_template_ready: set[str] = set()


async def _pg_exec(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def _ensure_template(worker: str) -> str:
    """One migrated template database per test process; each test copies it (fast).

    The name carries the process id so that concurrent runs on one machine never share (or drop)
    each other's template; it is dropped when the process exits."""
    name = f"kp_tmpl_{worker}_{os.getpid()}"
    with _template_lock:
        if name in _template_ready:
            return name

        async def make() -> None:
            await _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await _pg_exec(f'CREATE DATABASE "{name}"')
            engine = db.make_engine("postgresql+asyncpg://" + _pg_url(name).split("://", 1)[1])
            await db.migrate(engine)
            await engine.dispose()

        asyncio.run(make())
        _template_ready.add(name)
        atexit.register(lambda: asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
        return name


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test; dropped afterwards."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    tmpl = _ensure_template(worker)
    name = f"kp_t_{worker}_{secrets.token_hex(4)}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}"'))
    try:
        yield _pg_url(name)
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def make_settings(home: Path, database_url: str = "", config_text: str | None = None, **env: str) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        (home / "keyplane.toml").write_text(config_text)
    e = {
        "KEYPLANE_HOME": str(home),
        "KEYPLANE_DATABASE_URL": database_url,
        "KEYPLANE_SNAPSHOT_POLL_SECONDS": "0.2",
        **env,
    }
    return load_settings(env=e, create_secret=True)


def init_org(settings: Settings, org_name: str = "Test org", owner_email: str = "owner@example.com") -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        engine = db.make_engine(settings.database_url)
        await db.migrate(engine)
        async with db.sessionmaker(engine)() as s, s.begin():
            out = await control.init_org(s, settings.secret_key, org_name, owner_email)
        await engine.dispose()
        return out

    return asyncio.run(run())


@dataclass
class RunningServer:
    base_url: str
    settings: Settings
    app: KeyplaneApp
    init: dict[str, Any]
    server: uvicorn.Server
    thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def admin_key(self) -> str:
        return str(self.init["admin_key"])

    @property
    def api_key(self) -> str:
        return str(self.init["api_key"])

    @property
    def project_id(self) -> str:
        return str(self.init["project_id"])

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's own event loop (e.g. to inspect the runtime)."""
        loop = self.extra["loop"]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():  # a hang on shutdown is a bug: show where every thread is
            import faulthandler

            with open(os.environ.get("KEYPLANE_TEST_HANG_LOG", "/tmp/keyplane-test-hang.log"), "a") as f:
                faulthandler.dump_traceback(file=f, all_threads=True)
                loop = self.extra.get("loop")
                if loop is not None:
                    for task in asyncio.all_tasks(loop):
                        f.write(f"task {task.get_name()}:\n")
                        coro: Any = task.get_coro()
                        while coro is not None:
                            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                            if frame is not None:
                                f.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
                            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                        f.write(f"  awaiting {coro!r}\n")
            self.thread.join(20)


def _close_like_asyncio_run(loop: asyncio.AbstractEventLoop) -> None:
    """Close the server's loop as ``asyncio.run`` (and so ``keyplane serve``) does: the tasks still pending are
    cancelled and awaited first, so that one cut mid-query (a group commit, a fire-and-forget write) gives its
    database connection back before the loop is gone; else the driver's worker thread (aiosqlite) delivers its
    result to a closed loop and fails in a later test."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def start_server(settings: Settings, init: dict[str, Any] | None = None, clock: Clock | None = None) -> RunningServer:
    app = create_app(settings, clock=clock)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        loop="asyncio",
        http=http_protocol.protocol(),  # as `keyplane serve` (keyplane.http_protocol)
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )  # as `keyplane serve`: trusted_proxies decides (IP allowlists)
    server = uvicorn.Server(config)
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        finally:
            _close_like_asyncio_run(loop)

    thread = threading.Thread(target=run, daemon=True, name="keyplane-test-server")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("keyplane test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", settings, app, init or {}, server, thread, holder)


async def until_redis_time_passes(redis: Any, deadline_us: int, seconds: float = 10.0) -> None:
    """Poll Redis TIME, the Redis limiter's clock (its Lua scripts read it; no test can inject it), until it is
    past ``deadline_us``: a reservation whose expiry score is ``deadline_us`` lapses at the next admission."""
    give_up = time.monotonic() + seconds
    while True:
        sec, us = await redis.time()
        if int(sec) * 1_000_000 + int(us) > deadline_us:
            return
        assert time.monotonic() < give_up, "Redis TIME never passed the deadline"
        await asyncio.sleep(0.01)  # poll interval (a deadline loop)


def until_the_kill_switch_refuses(srv: Any, call: Any, seconds: float = 10.0) -> None:
    """Evaluate the kill switch (drain) and ``call()`` until the key is refused (401). The guard acts when it
    evaluates; its suspension reaches the snapshot through the bus, and on Redis the windows may need a second
    evaluation after they flush: one drain then one call races both."""
    import openai

    deadline = time.monotonic() + seconds
    while True:
        srv.call(srv.app.runtime.features.guard.drain())
        try:
            call()
        except openai.AuthenticationError:
            return
        assert time.monotonic() < deadline, "the kill switch never suspended the key"
        time.sleep(0.1)


@dataclass(frozen=True)
class _Store:
    """A store some gateway of the test initialized: its org (``init_org``'s keys) and the server secret every
    other gateway on it must share (the keys' digests are keyed with it)."""

    init: dict[str, Any]
    secret_key: bytes


class Gateways:
    """The one gateway factory of the tests: each ``start`` starts a real server and ``stop_all`` stops every one
    (in the order they started). The directories' conftests only compose their keyplane.toml text and
    environment (fake upstreams, limiter backend, a store) on top of it.

    Where a gateway's store is:

    - SQLite (``store=""``, the default): a copy of the session's initialized home (tests/conftest.py
      ``template_home``; migrating is the slow part), or the ``home`` given (a restart on an earlier one's).
    - PostgreSQL (``store`` a URL, e.g. the ``database_url`` fixture's): a home of its own on that database; the
      first gateway on it initializes the org, every later one shares that org and the first's secret key (a
      fleet). The database must outlive the gateways: a fixture calls ``stop_all`` after its yield; a test asks
      for ``database_url`` before ``gateways`` (pytest tears fixtures down in the reverse order).
    - ``org`` names an org of its own: a fresh, empty store initialized for this gateway alone (two instances
      that must not share keys, e.g. one governing the other as its provider).
    - ``init``: a store initialized already, its org's keys as ``init_org`` gives them; nothing is initialized.
      The ``home`` ``keyplane init`` initialized (a CLI test), or a store another gateway initialized, reached by
      another URL (``store``: a fault proxy's); that gateway's secret key is passed in the environment.
    """

    def __init__(self, template_home: Path, tmp_path: Path) -> None:
        self.template_home = template_home
        self.tmp_path = tmp_path
        self.started: list[RunningServer] = []
        self._stores: dict[str, _Store] = {}  # database URL -> the org and secret of its first gateway

    def _new_home(self) -> Path:
        home = self.tmp_path / f"home{len(self.started)}"
        while home.exists():
            home = home.with_name(home.name + "x")
        return home

    def home(self) -> Path:
        """A fresh copy of the template home."""
        import shutil

        home = self._new_home()
        shutil.copytree(self.template_home, home)
        return home

    def start(
        self,
        config_text: str | None = None,
        clock: Clock | None = None,
        home: Path | None = None,
        *,
        store: str = "",
        org: str | None = None,
        init: dict[str, Any] | None = None,
        seed: Callable[[Settings], None] | None = None,
        **env: str,
    ) -> RunningServer:
        """Start a gateway with this keyplane.toml text (None: no file) and environment; see the class for
        ``store``, ``org`` and ``init``. ``clock`` may be shared by several gateways of a test; ``seed`` writes to
        the store (its org initialized) before the server starts (e.g. a user's password)."""
        import json

        if init is not None:
            if org is not None:
                raise ValueError("init: the keys of an org initialized already (no org of its own)")
            settings = make_settings(home if home is not None else self._new_home(), store, config_text, **env)
            if store:
                self._stores.setdefault(store, _Store(init, settings.secret_key))
            return self._run(settings, init, clock, seed)
        if org is not None:
            if home is not None or store:
                raise ValueError("org: a fresh store of its own (no home, no store)")
            settings = make_settings(self._new_home(), "", config_text=config_text, **env)
            return self._run(settings, init_org(settings, org), clock, seed)
        if not store:
            home = home if home is not None else self.home()
            init = json.loads((home / "init.json").read_text())
            return self._run(make_settings(home, "", config_text=config_text, **env), init, clock, seed)
        home = home if home is not None else self._new_home()
        shared = self._stores.get(store)
        if shared is None:
            settings = make_settings(home, store, config_text=config_text, **env)
            shared = self._stores[store] = _Store(init_org(settings), settings.secret_key)
        else:
            env = {"KEYPLANE_SECRET_KEY": shared.secret_key.decode(), **env}
            settings = make_settings(home, store, config_text=config_text, **env)
        return self._run(settings, shared.init, clock, seed)

    def another(self, srv: RunningServer, clock: Clock | None = None) -> RunningServer:
        """Another instance of a started gateway: its settings (home, store, secret, keyplane.toml) and org."""
        return self._run(srv.settings, srv.init, clock)

    def _run(
        self,
        settings: Settings,
        init: dict[str, Any],
        clock: Clock | None,
        seed: Callable[[Settings], None] | None = None,
    ) -> RunningServer:
        if seed is not None:
            seed(settings)
        srv = start_server(settings, init, clock=clock)
        self.started.append(srv)
        return srv

    def stop(self, srv: RunningServer) -> None:
        """Stop one gateway before the test ends (e.g. to look at its store once it is closed)."""
        srv.stop()
        self.started.remove(srv)

    def stop_all(self) -> None:
        for s in self.started:
            s.stop()
        self.started.clear()
