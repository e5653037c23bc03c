"""Sign-in over plain HTTP (no browser): password + TOTP, enrolment, recovery codes, lockout, sessions."""

from __future__ import annotations

import re

import orjson
import pyotp
from sqlalchemy import select

from keyplane.store.models import AuditLog, User
from keyplane.web import auth
from tests.web.conftest import OWNER, PASSWORD, Web


def _audit(server, type_: str) -> list[AuditLog]:
    async def go():
        async with server.app.runtime.read() as s:
            return list(
                (await s.execute(select(AuditLog).where(AuditLog.type == type_).order_by(AuditLog.seq))).scalars()
            )

    return server.call(go())


def _user(server, email: str) -> User:
    async def go():
        async with server.app.runtime.read() as s:
            return (await s.execute(select(User).where(User.email == email))).scalar_one()

    return server.call(go())


def test_pages_need_a_session(web):
    cookie = web.get("/login").headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    for path in ("/", "/projects", "/usage", "/audit", "/users"):
        r = web.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    r = web.get("/login")
    assert r.status_code == 200 and "set-password" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert r.headers["x-frame-options"] == "DENY"


def test_first_sign_in_enrols_totp_and_second_uses_it(web, web_server):
    web.sign_in()
    assert web.get("/").status_code == 200
    u = _user(web_server, OWNER)
    assert u.totp_enabled and u.totp_secret and web.totp_secret not in u.totp_secret  # encrypted at rest
    assert len(orjson.loads(u.recovery_codes)) == 10
    assert "login.succeeded" in [a.type for a in _audit(web_server, "login.succeeded")]
    actor = orjson.loads(_audit(web_server, "login.succeeded")[-1].actor)
    assert actor == {"type": "session", "session": {"user": {"id": u.id, "email": OWNER}, "ip_address": "127.0.0.1"}}

    # Sign out, then in again: this time the TOTP step.
    r = web.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert _audit(web_server, "logout.succeeded")
    assert web.get("/").status_code == 303
    r = web.password_step(OWNER, PASSWORD)
    assert r.headers["location"] == "/login/totp"
    assert web.get("/").headers["location"] == "/login/totp"  # nothing else before the second factor
    web.get("/login/totp")
    r = web.post("/login/totp", {"code": "000000" if web.code() != "000000" else "111111"})
    assert r.status_code == 401 and "not valid" in r.text
    code = web.code()
    assert web.post("/login/totp", {"code": code}).status_code == 303
    assert web.get("/").status_code == 200
    # A code is accepted once.
    web.post("/logout")
    web.password_step(OWNER, PASSWORD)
    web.get("/login/totp")
    assert web.post("/login/totp", {"code": code}).status_code == 401


def test_recovery_code_works_once(web, web_server):
    web.sign_in()
    code = web.recovery_codes[0]
    for expected in (303, 401):
        web.post("/logout")
        web.password_step(OWNER, PASSWORD)
        web.get("/login/totp")
        r = web.post("/login/totp", {"code": code.upper()})
        assert r.status_code == expected
        web.get("/")
    assert len(orjson.loads(_user(web_server, OWNER).recovery_codes)) == 9


def test_wrong_password_is_throttled_with_growing_delays(web, web_server, clock):
    web.get("/login")
    for _ in range(3):  # a few free tries
        r = web.post("/login", {"email": OWNER, "password": "wrong password"})
        assert r.status_code == 401 and "Incorrect email or password" in r.text
    # Then each failure doubles the wait; while waiting even the right password is not checked.
    for wait in ("5 seconds", "10 seconds", "20 seconds", "40 seconds", "2 minutes"):
        r = web.post("/login", {"email": OWNER, "password": PASSWORD})
        assert r.status_code == 429 and f"Try again in {wait}." in r.text, r.text
        clock.advance({"5 seconds": 5, "10 seconds": 10, "20 seconds": 20, "40 seconds": 40}.get(wait, 80) + 0.5)
        assert web.post("/login", {"email": OWNER, "password": "wrong password"}).status_code == 401
    for _ in range(6):
        clock.advance(15 * 60 + 1)
        assert web.post("/login", {"email": OWNER, "password": "wrong password"}).status_code == 401
    r = web.post("/login", {"email": OWNER, "password": PASSWORD})
    assert r.status_code == 429 and "Try again in 15 minutes." in r.text  # the longest delay
    failed = _audit(web_server, "login.failed")
    assert orjson.loads(failed[-1].details)["error_code"] == "locked_out"
    assert PASSWORD not in "".join(a.details + a.actor for a in failed)
    clock.advance(15 * 60 + 1)
    web.sign_in()  # a full sign-in clears the pair's count
    assert web.get("/").status_code == 200
    web.post("/logout")
    web.get("/login")
    assert web.post("/login", {"email": OWNER, "password": "wrong password"}).status_code == 401


def test_stranger_cannot_lock_out_the_owner(web, web_server, clock):
    """Someone who knows the owner's email fails from another address as often as they like: the owner,
    from an address that is not failing, signs in with the right password and code at once."""
    web.sign_in()
    web.post("/logout")
    stranger = Web(web_server, clock, address="127.0.0.2")
    try:
        stranger.get("/login")
        codes = []
        for _ in range(60):
            codes.append(stranger.post("/login", {"email": OWNER, "password": "guess"}).status_code)
            clock.advance(1)
        assert codes[:3] == [401, 401, 401] and 429 in codes and set(codes) == {401, 429}
        assert codes.count(401) < 10  # growing delays
        r = stranger.post("/login", {"email": OWNER, "password": PASSWORD})
        assert r.status_code == 429  # the stranger's own address is held back, even with the right password
    finally:
        stranger.close()
    r = web.password_step(OWNER, PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/login/totp"
    web.get("/login/totp")
    assert web.post("/login/totp", {"code": web.code()}).status_code == 303
    assert web.get("/").status_code == 200


def test_lockout_per_address(web_server, clock):
    w = Web(web_server, clock)
    try:
        w.get("/login")
        for i in range(20):
            w.post("/login", {"email": f"nobody{i}@example.com", "password": "x"})
        r = w.post("/login", {"email": OWNER, "password": PASSWORD})
        assert r.status_code == 429
    finally:
        w.close()


def test_user_without_password_is_told_what_to_run(web, web_server):
    web.sign_in()
    r = web.post("/users", {"email": "new@example.com", "role": "reader"})
    assert r.status_code == 200
    # Clear the generated password, as `keyplane users add` leaves a user.

    async def clear():
        async with web_server.app.runtime.write() as s:
            u = (await s.execute(select(User).where(User.email == "new@example.com"))).scalar_one()
            u.password_hash = None

    web_server.call(clear())
    other = Web(web_server, web.clock)
    try:
        r = other.password_step("new@example.com", "anything at all")
        assert r.status_code == 403 and "keyplane users set-password new@example.com" in r.text
    finally:
        other.close()


def test_forged_or_expired_cookie_is_refused(web, web_server, clock):
    web.sign_in()
    name = auth.COOKIE
    value = web.c.cookies[name]
    body, _, sig = value.partition(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + sig
    web.c.cookies.set(name, forged, domain="127.0.0.1")
    assert web.c.get("/").status_code == 303
    web.c.cookies.set(name, value, domain="127.0.0.1")
    assert web.c.get("/").status_code == 200
    clock.advance(auth.SESSION_SECONDS + 1)
    assert web.c.get("/").status_code == 303


def test_reset_2fa_ends_sessions_and_asks_to_enrol_again(owner, web_server):
    uid = _user(web_server, OWNER).id
    page = owner.get("/users").text
    assert f"/users/{uid}/reset-2fa" in page
    r = owner.post(f"/users/{uid}/reset-2fa")
    assert r.status_code == 303
    assert owner.get("/").status_code == 303  # this session ended with the old second factor
    r = owner.password_step(OWNER, PASSWORD)
    assert r.headers["location"] == "/login/enroll"


def test_enrol_page_shows_qr_and_secret(web):
    web.password_step(OWNER, PASSWORD)
    page = web.get("/login/enroll").text
    assert "<svg" in page and 'viewBox="' in page
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")
    assert pyotp.TOTP(secret).now()
    # A reload shows the same secret (the app already scanned it).
    assert secret in web.get("/login/enroll").text.replace(" ", "")


def test_open_redirect_refused(web):
    web.get("/login?next=//evil.example/")
    r = web.post("/login", {"email": OWNER, "password": PASSWORD, "next": "//evil.example/"})
    assert r.headers["location"] == "/login/enroll"
