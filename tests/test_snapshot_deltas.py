"""The delta snapshot (issue 13): a bus delta replaces only the entries it names, a reload after a complete
event reads only the named rows, a full reload builds its maps off the event loop and keeps the objects of
unchanged keys, and billing reloads its configuration when the snapshot changes, not at its next poll."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

import keyplane.snapshot as snapshot_mod
from keyplane import control
from keyplane.billing.engine import Billing
from keyplane.bus.events import Event, KeyDelta
from keyplane.bus.in_process import InProcessBus
from keyplane.bus.publish import Publisher, publishing_sessionmaker
from keyplane.config import Settings
from keyplane.snapshot import Snapshot
from keyplane.snapshot_refresh import SnapshotRefresher
from keyplane.store import db
from tests.billing.conftest import billing_of
from tests.support import Gateways, init_org, make_settings


@pytest.fixture
def store(tmp_path: Path) -> tuple[Settings, dict[str, Any], list[str]]:
    """A SQLite store with init's keys and five more project keys: (settings, init, the extra key ids)."""
    settings = make_settings(tmp_path / "home")
    init = init_org(settings)

    async def more() -> list[str]:
        engine = db.make_engine(settings.database_url)
        try:
            async with db.sessionmaker(engine)() as s, s.begin():
                rows = [
                    await control.create_project_key(
                        s,
                        control.SYSTEM_ACTOR,
                        settings.secret_key,
                        init["project_id"],
                        name=f"k{i}",
                        owner_user_id=None,
                    )
                    for i in range(5)
                ]
            return [row.id for row, _ in rows]
        finally:
            await engine.dispose()

    return settings, init, asyncio.run(more())


class Statements:
    """Every SQL statement an engine runs, with its parameters."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[tuple[str, Any]] = []
        sa_event.listen(engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, _conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        self.seen.append((" ".join(statement.split()), parameters))

    def on_keys(self) -> list[tuple[str, Any]]:
        return [(s, p) for s, p in self.seen if "FROM api_keys" in s]


async def _setup(settings: Settings) -> tuple[AsyncEngine, Snapshot, SnapshotRefresher, Publisher]:
    engine = db.make_engine(settings.database_url)
    snap = Snapshot()
    bus = InProcessBus()
    bus.subscribe(snap.apply)
    refresher = SnapshotRefresher(snap, engine, interval=3600)
    await refresher.refresh(force=True)
    return engine, snap, refresher, Publisher(bus)


async def _revoke(engine: AsyncEngine, publisher: Publisher, key_id: str) -> None:
    async with publishing_sessionmaker(engine, publisher)() as s, s.begin():
        await control.revoke_key(s, control.SYSTEM_ACTOR, await control.get_key(s, key_id), "leaked")
    await publisher.drain()


async def test_a_revocation_replaces_that_entry_only_and_reloads_only_its_row(store) -> None:  # type: ignore[no-untyped-def]
    settings, init, extra = store
    engine, snap, refresher, publisher = await _setup(settings)
    try:
        victim = init["api_key_id"]
        before = dict(snap.keys_by_id)
        assert victim in before and set(extra) <= set(before)
        await _revoke(engine, publisher, victim)
        # Applied from the event, without SQL: a new object for the victim, the same objects for the others.
        assert snap.keys_by_id[victim] is not before[victim] and snap.keys_by_id[victim].revoked_at is not None
        assert all(snap.keys_by_id[k] is e for k, e in before.items() if k != victim)
        revoked = snap.keys_by_id[victim]

        stmts = Statements(engine)
        rev = snap.revision
        await refresher.refresh()  # what the bus's wake-up runs
        assert snap.revision == rev + 1
        on_keys = stmts.on_keys()
        assert len(on_keys) == 1, on_keys  # one SELECT of the named id, not of every key
        sql, params = on_keys[0]
        assert "WHERE api_keys.id IN" in sql and list(params) == [victim]
        # The reread row matches the delta: every entry keeps its object, the victim's included.
        assert snap.keys_by_id[victim] is revoked
        assert all(snap.keys_by_id[k] is e for k, e in before.items() if k != victim)
        assert snap.keys[snap._digests[victim]] is revoked
    finally:
        await engine.dispose()


async def test_a_change_the_event_does_not_name_falls_back_to_a_full_reload(store) -> None:  # type: ignore[no-untyped-def]
    settings, _init, extra = store
    engine, snap, refresher, publisher = await _setup(settings)
    try:
        before = dict(snap.keys_by_id)
        renamed = extra[0]
        async with publishing_sessionmaker(engine, publisher)() as s, s.begin():
            await control.update_key(s, control.SYSTEM_ACTOR, renamed, name="renamed")
        await publisher.drain()
        stmts = Statements(engine)
        await refresher.refresh()
        assert any("WHERE" not in sql for sql, _ in stmts.on_keys())  # every key read
        assert snap.keys_by_id[renamed].name == "renamed" and snap.keys_by_id[renamed] is not before[renamed]
        assert all(snap.keys_by_id[k] is e for k, e in before.items() if k != renamed)
    finally:
        await engine.dispose()


async def test_too_many_named_ids_or_a_missed_revision_mean_a_full_reload(store) -> None:  # type: ignore[no-untyped-def]
    settings, _init, _extra = store
    engine, snap, _refresher, _publisher = await _setup(settings)
    try:
        r = snap.revision
        snap.apply(Event(revision=r + 2, first=r + 2, complete=True))  # r + 1 never announced
        assert snap.named_changes(r + 2) is None
        snap.apply(Event(revision=r + 1, first=r + 1, complete=True))
        assert snap.named_changes(r + 2) == (set(), set())
        many = tuple(KeyDelta(f"key_{i}") for i in range(snapshot_mod.INCREMENTAL_MAX_IDS + 1))
        snap.apply(Event(revision=r + 3, first=r + 3, keys=many, complete=True))
        assert snap.named_changes(r + 3) is None
    finally:
        await engine.dispose()


async def test_a_full_reload_builds_its_maps_off_the_event_loop(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, _init, _extra = store
    engine = db.make_engine(settings.database_url)
    threads: list[int] = []
    build = snapshot_mod.build_keys

    def spy(*a: Any) -> Any:
        threads.append(threading.get_ident())
        return build(*a)

    monkeypatch.setattr(snapshot_mod, "build_keys", spy)
    try:
        snap = Snapshot()
        await snap.load(engine)
        first = dict(snap.keys_by_id)
        await snap.load(engine)
        assert len(threads) == 2 and threading.get_ident() not in threads
        assert len(first) >= 6 and all(snap.keys_by_id[k] is e for k, e in first.items())  # nothing changed
    finally:
        await engine.dispose()


@pytest.fixture
def slow_polling_billing(monkeypatch: pytest.MonkeyPatch, gateways: Gateways) -> Iterator[Any]:
    monkeypatch.setattr(Billing, "poll_seconds", 3600.0)  # only a snapshot change can wake it
    yield gateways.start()
    gateways.stop_all()  # before the monkeypatch is undone


def test_billing_reloads_its_configuration_when_the_snapshot_changes(slow_polling_billing) -> None:  # type: ignore[no-untyped-def]
    srv = slow_polling_billing
    billing = billing_of(srv)
    assert not billing.cfg.grants
    with httpx.Client(
        base_url=srv.v1 + "/organization", headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=30
    ) as h:
        r = h.post("/credit_grants", json={"amount": 100, "currency": "usd"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20  # far below the hour-long poll: only the subscription can do it
    while not billing.cfg.grants:
        assert time.monotonic() < deadline, "billing did not reload on the snapshot's change"
        time.sleep(0.02)
    assert billing.cfg.revision == srv.app.runtime.snapshot.revision
