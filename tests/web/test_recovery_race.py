"""A recovery code signs in once, even when several sign-ins send it at the same moment (on PostgreSQL, where
concurrent writers do not queue for one database lock as on SQLite): spending it is one atomic step, not a read,
a check and a write that two requests can both pass."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import orjson
import pytest
from sqlalchemy import select

from keyplane.store.models import User
from tests.support import Gateways, RunningServer, postgres_database
from tests.web.conftest import OWNER, PASSWORD, OffsetClock, Web, with_owner_password

RACERS = 8


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_server(request: pytest.FixtureRequest, gateways: Gateways, clock: OffsetClock) -> Iterator[RunningServer]:
    with postgres_database() if request.param == "postgres" else _sqlite() as url:
        try:
            yield gateways.start(clock=clock, store=url, seed=with_owner_password)
        finally:
            gateways.stop_all()  # before the database is dropped


class _sqlite:
    def __enter__(self) -> str:
        return ""

    def __exit__(self, *exc: object) -> None:
        return None


def _codes_left(server: RunningServer) -> int:
    async def go() -> int:
        async with server.app.runtime.read() as s:
            stored = (await s.execute(select(User.recovery_codes).where(User.email == OWNER))).scalar_one()
            return len(orjson.loads(stored))

    return int(server.call(go()))


def test_a_recovery_code_raced_by_concurrent_sign_ins_works_once(store_server, clock):
    first = Web(store_server, clock)
    racers = [Web(store_server, clock) for _ in range(RACERS)]
    try:
        first.sign_in()  # enrols TOTP: ten recovery codes
        code, other = first.recovery_codes[0], first.recovery_codes[1]
        for w in racers:  # each at the second step, its form open
            assert w.password_step(OWNER, PASSWORD).headers["location"] == "/login/totp"
            w.get("/login/totp")
        go = threading.Barrier(RACERS)

        def attempt(w: Web) -> int:
            go.wait()
            return w.post("/login/totp", {"code": code}).status_code

        with concurrent.futures.ThreadPoolExecutor(RACERS) as pool:
            statuses = list(pool.map(attempt, racers))
        assert sorted(statuses) == [303] + [401] * (RACERS - 1), statuses
        assert _codes_left(store_server) == 9
        # another code still works: the race spent only the one code (past the lockout its failures earned)
        clock.advance(3600)
        w = racers[statuses.index(401)]
        assert w.password_step(OWNER, PASSWORD).headers["location"] == "/login/totp"
        w.get("/login/totp")
        assert w.post("/login/totp", {"code": other}).status_code == 303
        assert _codes_left(store_server) == 8
    finally:
        for w in (first, *racers):
            w.close()
