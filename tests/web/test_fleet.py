"""Sign-in state is shared: sign-out, used TOTP codes and the throttle hold across a restart (SQLite)
and across two instances sharing one PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator

import pyotp
import pytest
from sqlalchemy import func, select

from keyplane.store.models import WebLoginThrottle, WebSessionEnd, WebTotpStep
from keyplane.web import auth
from tests.support import Gateways, RunningServer, postgres_database
from tests.web.conftest import OWNER, PASSWORD, OffsetClock, Web, with_owner_password


def _count(server: RunningServer, table: type) -> int:
    rt = server.app.runtime
    assert rt is not None

    async def go() -> int:
        async with rt.read() as s:
            return int((await s.execute(select(func.count()).select_from(table))).scalar_one())

    return int(server.call(go()))


def _cookie(w: Web) -> str:
    return str(w.c.cookies[auth.COOKIE])


def _with_cookie(server: RunningServer, clock: OffsetClock, cookie: str) -> Web:
    w = Web(server, clock)
    w.c.cookies.set(auth.COOKIE, cookie, domain="127.0.0.1")
    return w


def _totp(w: Web, code: str) -> int:
    """The password step, then ``code``: the status of the code step."""
    r = w.password_step(OWNER, PASSWORD)
    assert r.headers["location"] == "/login/totp", r.text
    w.get("/login/totp")
    return w.post("/login/totp", {"code": code}).status_code


# --- one node on SQLite, restarted -----------------------------------------------------------------


def test_sign_out_and_used_code_survive_a_restart(gateways: Gateways) -> None:
    clock = OffsetClock()
    srv = gateways.start(clock=clock, seed=with_owner_password)
    w = Web(srv, clock)
    try:
        w.sign_in()  # enrols
        secret = w.totp_secret
        w.post("/logout")
        code = w.code()
        assert _totp(w, code) == 303
        assert w.get("/").status_code == 200
        signed_out = _cookie(w)
        assert w.post("/logout").status_code == 303
        assert _count(srv, WebSessionEnd) == 2 and _count(srv, WebTotpStep) == 2
    finally:
        w.close()
        srv.stop()

    srv = gateways.another(srv, clock)  # the same home and store, a new process state
    old = _with_cookie(srv, clock, signed_out)
    w = Web(srv, clock)
    w.totp_secret = secret
    try:
        r = old.c.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert old.c.get("/projects").status_code == 303
        assert _totp(w, code) == 401  # used before the restart
        assert _totp(w, w.code()) == 303
        # Rows expire and are pruned as new ones are written.
        clock.advance(auth.SESSION_SECONDS + 60)
        w.sign_in()
        w.post("/logout")
        assert _count(srv, WebSessionEnd) == 1 and _count(srv, WebTotpStep) == 1
    finally:
        old.close()
        w.close()
        srv.stop()


# --- two instances on one PostgreSQL database ----------------------------------------------------


@pytest.fixture
def pair(gateways: Gateways) -> Iterator[tuple[RunningServer, RunningServer, OffsetClock]]:
    clock = OffsetClock()
    with postgres_database() as url:
        try:  # two instances of one store and org (one secret), one clock
            a = gateways.start(clock=clock, store=url, seed=with_owner_password)
            b = gateways.start(clock=clock, store=url)
            yield a, b, clock
        finally:
            gateways.stop_all()  # before the database is dropped


@pytest.mark.postgres
def test_sign_out_on_one_instance_ends_the_session_on_the_other(pair) -> None:
    a, b, clock = pair
    wa = Web(a, clock)
    try:
        wa.sign_in()
        cookie = _cookie(wa)
        wb = _with_cookie(b, clock, cookie)
        try:
            assert wb.c.get("/").status_code == 200  # the same session works on either instance
            assert wa.post("/logout").status_code == 303
            r = wb.c.get("/")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
        finally:
            wb.close()
    finally:
        wa.close()


@pytest.mark.postgres
def test_a_totp_code_is_accepted_once_by_the_fleet(pair) -> None:
    a, b, clock = pair
    wa, wb = Web(a, clock), Web(b, clock)
    try:
        wa.sign_in()
        wb.totp_secret = wa.totp_secret
        wa.post("/logout")
        code = wa.code()
        assert _totp(wa, code) == 303
        assert _totp(wb, code) == 401
        assert _totp(wb, pyotp.TOTP(wa.totp_secret or "").at(clock.now() + 30)) == 303  # the next step: fine
    finally:
        wa.close()
        wb.close()


@pytest.mark.postgres
def test_throttle_is_shared_and_never_locks_the_owner_out(pair) -> None:
    a, b, clock = pair
    owner = Web(a, clock)
    stranger_a, stranger_b = Web(a, clock, address="127.0.0.2"), Web(b, clock, address="127.0.0.2")
    try:
        owner.sign_in()
        owner.post("/logout")
        stranger_a.get("/login")
        stranger_b.get("/login")
        for _ in range(3):
            assert stranger_a.post("/login", {"email": OWNER, "password": "guess"}).status_code == 401
        # The other instance knows: the pair waits there too.
        r = stranger_b.post("/login", {"email": OWNER, "password": "guess"})
        assert r.status_code == 429 and "Try again in 5 seconds." in r.text
        # Twenty failures from one address, on any emails and instances, block that address.
        for i in range(17):
            w = stranger_a if i % 2 else stranger_b
            assert w.post("/login", {"email": f"x{i}@example.com", "password": "guess"}).status_code == 401
        r = stranger_b.post("/login", {"email": "someone@example.com", "password": "guess"})
        assert r.status_code == 429 and "Try again in 15 minutes." in r.text
        # The owner, from an address that is not failing, gets in on either instance at once.
        owner_b = Web(b, clock)
        owner_b.totp_secret = owner.totp_secret
        try:
            for w in (owner, owner_b):
                assert _totp(w, w.code()) == 303
                assert w.get("/").status_code == 200
        finally:
            owner_b.close()
        assert _count(a, WebLoginThrottle) == 2 + 17
    finally:
        for w in (owner, stranger_a, stranger_b):
            w.close()


@pytest.mark.postgres
def test_a_password_change_on_one_instance_ends_sessions_on_the_other(pair) -> None:
    a, b, clock = pair
    wa, wb = Web(a, clock), Web(b, clock)
    try:
        wa.sign_in()
        wb.totp_secret = wa.totp_secret
        assert _totp(wb, wb.code()) == 303 and wb.get("/").status_code == 200
        wa.get("/account")
        new = "another long password 42"
        r = wa.post("/account/password", {"current": PASSWORD, "new": new, "again": new})
        assert r.status_code == 303
        assert wa.get("/account").status_code == 200  # the session that changed it goes on
        r = wb.c.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    finally:
        wa.close()
        wb.close()
