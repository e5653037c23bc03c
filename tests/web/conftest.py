from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import select

from keyplane.store import db
from keyplane.store.models import User
from keyplane.web import auth
from tests.support import Gateways, RunningServer

OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"


class OffsetClock:
    """Real time plus an offset a test moves forward, so each sign-in gets a fresh TOTP step without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def set_password(settings: Any, email: str, password: str) -> None:
    async def go() -> None:
        engine = db.make_engine(settings.database_url)
        try:
            async with db.sessionmaker(engine)() as s, s.begin():
                u = (await s.execute(select(User).where(User.email == email))).scalar_one()
                u.password_hash = auth.hash_password(password)
        finally:
            await engine.dispose()

    asyncio.run(go())


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m, page[:2000]
    return m.group(1)


class Web:
    """A cookie-keeping HTTP client that signs in like a person would (no browser)."""

    def __init__(self, server: RunningServer, clock: OffsetClock, address: str | None = None) -> None:
        """``address``: the local address to connect from (e.g. 127.0.0.2), to be another client address."""
        self.server = server
        self.clock = clock
        transport = httpx.HTTPTransport(local_address=address) if address else None
        self.c = httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=20, transport=transport)
        self.totp_secret: str | None = None
        self.recovery_codes: list[str] = []
        self.csrf = ""

    def close(self) -> None:
        self.c.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        r = self.c.get(path, **kw)
        if "csrf_token" in r.text:
            self.csrf = csrf_of(r.text)
        return r

    def post(self, path: str, data: dict[str, Any] | None = None, csrf: bool = True, **kw: Any) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body.setdefault("csrf_token", self.csrf)
        return self.c.post(path, data=body, **kw)

    def code(self) -> str:
        assert self.totp_secret
        self.clock.advance(30)  # a fresh time step: each code is accepted once
        return pyotp.TOTP(self.totp_secret).at(self.clock.now())

    def password_step(self, email: str, password: str) -> httpx.Response:
        self.get("/login")
        return self.post("/login", {"email": email, "password": password})

    def sign_in(self, email: str = OWNER, password: str = PASSWORD) -> None:
        r = self.password_step(email, password)
        assert r.status_code == 303, r.text
        if r.headers["location"].startswith("/login/enroll"):
            page = self.get("/login/enroll").text
            m = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
            assert m, page
            self.totp_secret = m.group(1).replace(" ", "")
            r = self.post("/login/enroll", {"code": self.code()})
            assert r.status_code == 200 and "recovery-codes" in r.text, r.text
            self.recovery_codes = [html.unescape(c) for c in re.findall(r"<li><code>([^<]+)</code></li>", r.text)]
            assert len(self.recovery_codes) == 10
        else:
            assert r.headers["location"].startswith("/login/totp")
            self.get("/login/totp")
            r = self.post("/login/totp", {"code": self.code()})
            assert r.status_code == 303, r.text
        self.get("/")


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def web_env() -> tuple[str | None, dict[str, str]]:
    """The web server's keyplane.toml text (None: none) and environment; a test module overrides it."""
    return None, {}


def with_owner_password(settings: Any) -> None:
    """Gateways' seed for the dashboard: the owner signs in with PASSWORD."""
    set_password(settings, OWNER, PASSWORD)


@pytest.fixture
def web_server(gateways: Gateways, web_env: tuple[str | None, dict[str, str]], clock) -> Iterator[RunningServer]:
    """A real server on SQLite, org initialized, the owner with a password (no TOTP yet)."""
    config_text, env = web_env
    yield gateways.start(config_text, clock, seed=with_owner_password, **env)
    gateways.stop_all()  # before the module's fakes and environment go


@pytest.fixture
def web(web_server, clock) -> Iterator[Web]:
    w = Web(web_server, clock)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def owner(web) -> Web:
    web.sign_in()
    return web
