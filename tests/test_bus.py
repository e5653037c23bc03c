"""The invalidation bus: what a committed change publishes, the three transports, and how the snapshot
applies deltas without reading SQL and tracks its freshness."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keyplane import control
from keyplane.bus.events import Event, KeyDelta
from keyplane.bus.in_process import InProcessBus
from keyplane.bus.pg_notify import PgNotifyBus
from keyplane.bus.publish import Publisher, publishing_sessionmaker
from keyplane.bus.redis_pubsub import RedisBus
from keyplane.config import Settings
from keyplane.snapshot import Snapshot
from keyplane.store import db
from tests.support import Gateways, init_org, make_settings, postgres_database

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _wait(cond, seconds: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < seconds, "timed out"
        await asyncio.sleep(0.01)


async def _revoke_through(database_url: str, publisher: Publisher, key_id: str) -> None:
    engine = db.make_engine(database_url)
    try:
        async with publishing_sessionmaker(engine, publisher)() as s, s.begin():
            row = await control.get_key(s, key_id)
            await control.revoke_key(s, control.SYSTEM_ACTOR, row, "leaked")
        await publisher.drain()
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    settings = make_settings(tmp_path / "home")
    return settings, init_org(settings)


async def test_a_revocation_publishes_a_complete_delta_applied_without_sql(sqlite_store) -> None:  # type: ignore[no-untyped-def]
    settings, init = sqlite_store
    engine = db.make_engine(settings.database_url)
    snap = Snapshot()
    await snap.load(engine)
    await engine.dispose()  # the receiver never reads SQL again
    bus = InProcessBus()
    got: list[Event] = []
    bus.subscribe(got.append)
    bus.subscribe(snap.apply)
    rev = snap.revision
    await _revoke_through(settings.database_url, Publisher(bus), init["api_key_id"])
    assert len(got) == 1
    ev = got[0]
    assert (ev.first, ev.revision, ev.complete) == (rev + 1, rev + 1, True)
    assert ev.keys == (KeyDelta(init["api_key_id"], ev.keys[0].revoked_at, "leaked"),)
    entry = snap.keys_by_id[init["api_key_id"]]
    assert entry.revoked_at is not None and "leaked" in (entry.inactive_reason(time.time()) or "")
    assert snap.applied == rev + 1


async def test_a_change_the_event_cannot_carry_asks_for_a_reload(sqlite_store) -> None:  # type: ignore[no-untyped-def]
    settings, init = sqlite_store
    engine = db.make_engine(settings.database_url)
    bus = InProcessBus()
    got: list[Event] = []
    bus.subscribe(got.append)
    publisher = Publisher(bus)
    async with publishing_sessionmaker(engine, publisher)() as s, s.begin():
        await control.update_key(s, control.SYSTEM_ACTOR, init["api_key_id"], name="renamed")
    async with publishing_sessionmaker(engine, publisher)() as s, s.begin():
        await control.get_key(s, init["api_key_id"])  # no revision bump: nothing published
    await engine.dispose()
    assert len(got) == 1 and not got[0].complete and got[0].keys == ()


def _snapshot_with_key(clock: list[float]) -> Snapshot:
    from keyplane.scopes import parse_permissions
    from keyplane.snapshot import KeyEntry

    snap = Snapshot(monotonic=lambda: clock[0])
    e = KeyEntry(
        "key_a",
        "proj",
        "a",
        "sk-kp-proj-...abcd",
        "proj_1",
        None,
        None,
        parse_permissions(None),
        None,
        None,
        None,
        None,
        None,
    )
    snap.keys, snap.keys_by_id, snap._digests = {"d": e}, {"key_a": e}, {"key_a": "d"}
    snap.revision = snap.applied = 5
    snap.confirm()
    return snap


def test_freshness_needs_every_revision_announced() -> None:
    clock = [100.0]
    snap = _snapshot_with_key(clock)
    wanted: list[bool] = []
    snap.reload_wanted = lambda: wanted.append(True)
    clock[0] += 8
    snap.apply(Event(revision=5, kind="heartbeat"))  # the fleet is at 5, as we are
    assert snap.staleness() == 0 and snap.is_fresh(10)
    # Revision 6 is missed; 7 (a suspension) arrives: applied at once, but the snapshot is not current.
    snap.apply(Event(revision=7, first=7, keys=(KeyDelta("key_a", suspended_at=1, suspend_reason="x"),), complete=True))
    assert snap.keys["d"].suspended_at == 1 and snap.applied == 5 and wanted
    clock[0] += 11
    snap.apply(Event(revision=7, kind="heartbeat"))
    assert not snap.is_fresh(10) and snap.is_fresh(0)  # 0: no bound
    snap.apply(Event(revision=6, first=6, keys=(KeyDelta("key_a", revoked_at=2),), complete=True))
    assert snap.applied == 7 and snap.is_fresh(10)
    # An event applied twice, or an older one, changes nothing.
    snap.apply(Event(revision=7, first=7, keys=(KeyDelta("key_a", suspended_at=1),), complete=True))
    assert snap.keys["d"].revoked_at == 2


def test_a_revoked_entry_is_a_new_object() -> None:
    """A stream in flight compares its key entry by identity: a delta must replace the entry."""
    clock = [0.0]
    snap = _snapshot_with_key(clock)
    before = snap.keys_by_id["key_a"]
    changed: list[bool] = []
    snap.on_change(lambda: changed.append(True))
    snap.apply(Event(revision=6, first=6, keys=(KeyDelta("key_a", revoked_at=9),), complete=True))
    assert snap.keys_by_id["key_a"] is not before and snap.keys["d"] is snap.keys_by_id["key_a"]
    assert before.revoked_at is None and changed


@pytest.mark.redis
async def test_redis_bus_publishes_to_every_subscriber() -> None:
    prefix = f"kptest-bus-{secrets.token_hex(4)}"
    a, b = RedisBus(REDIS_URL, prefix), RedisBus(REDIS_URL, prefix)
    got: list[Event] = []
    b.subscribe(got.append)
    await b.start()
    try:
        await asyncio.wait_for(b.subscribed.wait(), 5)
        ev = Event(revision=3, first=3, keys=(KeyDelta("key_x", revoked_at=1),), complete=True, origin="a")
        await a.publish(ev)
        await _wait(lambda: got)
        assert got == [ev]
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_store(tmp_path: Path, pg_url: str) -> tuple[Settings, dict[str, Any]]:
    settings = make_settings(tmp_path / "home", pg_url)
    return settings, init_org(settings)


@pytest.mark.postgres
async def test_postgres_notify_bus_applies_a_revocation(pg_store) -> None:  # type: ignore[no-untyped-def]
    settings, init = pg_store
    engine = db.make_engine(settings.database_url)
    snap = Snapshot()
    await snap.load(engine)
    await engine.dispose()
    receiver, sender = PgNotifyBus(settings.database_url), PgNotifyBus(settings.database_url)
    receiver.subscribe(snap.apply)
    await receiver.start()
    try:
        await asyncio.wait_for(receiver.subscribed.wait(), 5)
        await _revoke_through(settings.database_url, Publisher(sender), init["api_key_id"])
        await _wait(lambda: snap.keys_by_id[init["api_key_id"]].revoked_at is not None)
    finally:
        await receiver.close()
        await sender.close()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "postgres-notify"])
def test_the_cli_publishes_so_a_slow_polling_instance_refuses_at_once(
    pg_url: str,
    with_redis: bool,
    monkeypatch: pytest.MonkeyPatch,
    gateways: Gateways,
) -> None:
    env = {"KEYPLANE_SNAPSHOT_POLL_SECONDS": "60"}
    if with_redis:
        env |= {"KEYPLANE_REDIS_URL": REDIS_URL, "KEYPLANE_REDIS_PREFIX": f"kptest-bus-{secrets.token_hex(4)}"}
    srv = gateways.start(store=pg_url, **env)
    rt = srv.app.runtime
    assert rt is not None and rt.bus is not None
    srv.call(asyncio.wait_for(rt.bus.subscribed.wait(), 5))  # type: ignore[attr-defined]
    models = httpx.get(srv.v1 + "/models", headers={"authorization": f"Bearer {srv.api_key}"})
    assert models.status_code == 200
    from keyplane.cli import app

    for k, v in {"KEYPLANE_HOME": str(srv.settings.home), "KEYPLANE_DATABASE_URL": pg_url, **env}.items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(app, ["keys", "revoke", srv.init["api_key_id"], "--reason", "leaked"])
    assert out.exit_code == 0, out.output
    t0 = time.monotonic()
    while True:
        r = httpx.get(srv.v1 + "/models", headers={"authorization": f"Bearer {srv.api_key}"})
        if r.status_code == 401:
            break
        assert time.monotonic() - t0 < 1.0, "the running instance still admits the revoked key"
        time.sleep(0.02)
    assert "leaked" in r.json()["error"]["message"]
