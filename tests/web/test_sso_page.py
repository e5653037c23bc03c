"""The Single sign-on page (issue 16): the SSO settings as the sign-in reads them, read-only, never the secret."""

from __future__ import annotations

import html
import re

import pytest

from tests.web.conftest import Web

SECRET = "kp-test-sso-client-secret-4f1c9a"


@pytest.fixture
def web_env(monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, dict[str, str]]:
    monkeypatch.setenv("KP_TEST_SSO_SECRET", SECRET)  # the server runs in this process: it reads this variable
    return None, {
        "KEYPLANE_SSO_ISSUER": "https://idp.example.com/realms/acme",
        "KEYPLANE_SSO_CLIENT_ID": "keyplane-dashboard",
        "KEYPLANE_SSO_CLIENT_SECRET_ENV": "KP_TEST_SSO_SECRET",
        "KEYPLANE_SSO_GROUPS_CLAIM": "roles",
        "KEYPLANE_SSO_ROLE_MAP": "platform=owner, eng=reader,ops=admin,broken",
    }


def _map(page: str) -> dict[str, str]:
    rows = re.findall(
        r'<td data-label="Group" class="mono">([^<]+)</td><td data-label="Role"><span class="badge '
        r'badge-\w+">(\w+)</span>',
        page,
    )
    return dict(rows)


def test_the_sso_settings_are_shown_never_the_secret(owner: Web, web_server, clock):
    r = owner.get("/sso")
    assert r.status_code == 200
    page = html.unescape(r.text)
    assert '<span class="status status-active">on</span>' in page
    assert 'id="sso-issuer">https://idp.example.com/realms/acme<' in page
    assert 'id="sso-client-id">keyplane-dashboard<' in page
    assert "<code>KP_TEST_SSO_SECRET</code>: set" in page
    assert f"{web_server.base_url}/login/sso/callback" in page
    assert _map(page) == {"platform": "owner", "eng": "reader"}
    assert re.search(r'id="sso-ignored">.*<code>ops=admin</code>, <code>broken</code>', page)
    for path in ("/", "/sso", "/roles", "/access", "/users", "/audit"):
        assert SECRET not in owner.get(path).text, path
    assert 'action="/sso"' not in page  # read-only: nothing to post
    assert owner.post("/sso", {}).status_code == 405

    # A reader sees the same page.
    r = owner.post("/users", {"email": "reader@example.com", "role": "reader"})
    password = re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    reader = Web(web_server, clock)
    try:
        reader.sign_in("reader@example.com", password)
        page = html.unescape(reader.get("/sso").text)
        assert _map(page) == {"platform": "owner", "eng": "reader"} and SECRET not in page
    finally:
        reader.close()


def test_an_unset_secret_is_said(owner: Web, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KP_TEST_SSO_SECRET")
    assert "<code>KP_TEST_SSO_SECRET</code>: <strong>not set</strong>" in owner.get("/sso").text
