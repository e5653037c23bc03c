"""Dashboard SSO end to end: the test's own OIDC provider (keyplane.testing.fake_oidc), keyplane, Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from keyplane.testing.fake_oidc import FakeOIDC
from tests.support import Gateways, RunningServer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SECRET_ENV = "KP_TEST_SSO_CLIENT_SECRET"


@pytest.fixture
def sso_server(gateways: Gateways, idp: FakeOIDC, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setenv(SECRET_ENV, idp.client_secret)
    yield gateways.start(
        KEYPLANE_SSO_ISSUER=idp.issuer,
        KEYPLANE_SSO_CLIENT_ID=idp.client_id,
        KEYPLANE_SSO_CLIENT_SECRET_ENV=SECRET_ENV,
        KEYPLANE_SSO_ROLE_MAP="platform=owner, eng=reader",
        KEYPLANE_SSO_CREATE_USERS="true",
    )
    gateways.stop_all()  # before the client secret's variable goes


def _roles(srv: RunningServer) -> dict[str, str]:
    admin = OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="unused", max_retries=0)
    return {u.email: u.role for u in admin.admin.organization.users.list()}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")
def test_sso_sign_in_in_chromium(sso_server: RunningServer, idp: FakeOIDC) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:

            def sign_in(user: dict[str, Any]) -> Any:
                idp.next_user = user
                page = browser.new_context(base_url=sso_server.base_url).new_page()
                page.goto("/login")
                page.click("#sso-login")
                page.wait_for_load_state()
                return page

            page = sign_in({"sub": "a1", "email": "Alice@Example.com", "email_verified": True, "groups": ["platform"]})
            assert page.url.rstrip("/") == sso_server.base_url, page.url
            assert "alice@example.com" in page.content()
            page = sign_in({"sub": "b1", "email": "bob@example.com", "groups": ["eng", "other"]})
            assert page.url.rstrip("/") == sso_server.base_url, page.url
            page = sign_in({"sub": "c1", "email": "carol@example.com", "groups": ["other"]})
            assert "/login/sso/callback" in page.url and "no group allowed" in page.content()
        finally:
            browser.close()
    roles = _roles(sso_server)
    assert roles["alice@example.com"] == "owner" and roles["bob@example.com"] == "reader"
    assert "carol@example.com" not in roles
    assert not idp.token_errors  # keyplane sent the right secret, redirect_uri and PKCE verifier


def test_callback_refuses_a_foreign_state_and_a_missing_flow(sso_server: RunningServer, idp: FakeOIDC) -> None:
    idp.next_user = {"sub": "a1", "email": "alice@example.com", "groups": ["platform"]}
    with httpx.Client(base_url=sso_server.base_url, follow_redirects=False, timeout=10) as c:
        to_idp = c.get("/login/sso")
        assert to_idp.status_code == 303 and to_idp.headers["location"].startswith(idp.issuer + "/authorize?")
        assert "code_challenge_method=S256" in to_idp.headers["location"]
        back = httpx.get(to_idp.headers["location"], follow_redirects=False, timeout=10).headers["location"]
        code = httpx.URL(back).params["code"]
        r = c.get("/login/sso/callback", params={"code": code, "state": "forged"})
        assert r.status_code == 400 and "kp_session" not in "".join(r.headers.get_list("set-cookie"))
    with httpx.Client(base_url=sso_server.base_url, follow_redirects=False, timeout=10) as other:
        # Someone else's callback URL (code and state) without the flow cookie of this browser.
        assert other.get(back).status_code == 400
