"""The organization's IP allowlist holds the admin API and the dashboard too, not only /v1; setting a list that
leaves out the caller is refused unless confirmed; the CLI on the server, never IP-restricted, lifts it."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from typer.testing import CliRunner

from keyplane.cli import app
from tests.support import RunningServer
from tests.web.conftest import OWNER, PASSWORD, Web, clock, owner, web, web_env, web_server  # noqa: F401

MSG = [{"role": "user", "content": "hi"}]
OTHER = "127.0.0.2"  # a second local address: the one the allowlist keeps (Linux routes 127/8 to loopback)


def _from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=20)


def _admin(srv: RunningServer, address: str | None = None, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=srv.v1,
        admin_api_key=key or srv.admin_key,
        api_key="unused",
        max_retries=0,
        http_client=_from(address) if address else None,
    )


def _set_org(srv: RunningServer, cidrs: list[str], address: str | None = None, **extra: object) -> httpx.Response:
    with _from(address or "127.0.0.1") as c:
        return c.post(
            f"{srv.v1}/organization/ip_allowlist",
            json={"cidrs": cidrs, **extra},
            headers={"Authorization": f"Bearer {srv.admin_key}"},
        )


def _refused_admin(call: Callable[[], object], address: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.code == "ip_not_allowed", e.value.body
    assert address in e.value.message and "organization" in e.value.message, e.value.message
    body = e.value.response.json()
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"


def _run_cli(srv: RunningServer, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """`keyplane access ...` on the server's store."""
    monkeypatch.setenv("KEYPLANE_HOME", str(srv.settings.home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", srv.settings.database_url)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    res = CliRunner().invoke(app, ["access", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the running server did not see the change"
        time.sleep(0.05)


def test_admin_api_is_held_to_the_org_allowlist(gw, fake, monkeypatch):
    # A list that leaves out the caller's own address is refused: it would lock the caller out.
    r = _set_org(gw, ["10.0.0.0/8"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "ip_allowlist_lockout", r.text
    assert "127.0.0.1" in r.json()["error"]["message"]
    assert _set_org(gw, ["10.0.0.0/8"], confirm_lockout="yes").status_code == 400
    assert _set_org(gw, [OTHER], address=OTHER).status_code == 200  # the caller is on it

    inside, outside = _admin(gw, OTHER), _admin(gw)
    assert inside.admin.organization.projects.model_permissions.retrieve(gw.project_id).mode == "deny_list"
    _refused_admin(lambda: outside.admin.organization.projects.model_permissions.retrieve(gw.project_id), "127.0.0.1")
    _refused_admin(lambda: outside.admin.organization.projects.list(), "127.0.0.1")
    # Checked before the key: an outsider cannot even learn whether a key is valid.
    _refused_admin(lambda: _admin(gw, key="sk-kp-admin-not-a-key").admin.organization.projects.list(), "127.0.0.1")
    # Lifting the list is an admin call too: refused from outside.
    with _from("127.0.0.1") as c:
        r = c.delete(f"{gw.v1}/organization/ip_allowlist", headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
    # /v1 as before.
    fake.reset()
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=MSG
        )
    assert fake.model_requests() == []
    # On /v1 too the organization's list comes before the key: a made-up key from outside gets the same 403
    # as a valid one (not the 401 that would tell them apart).
    for key in (gw.api_key, "sk-proj-" + "x" * 40, "not-a-key"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=MSG
            )
        assert e.value.code == "ip_not_allowed", e.value.body
    assert (
        openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0, http_client=_from(OTHER))
        .chat.completions.create(model="gpt-4o-mini", messages=MSG)
        .choices
    )

    # Locked out: the CLI on the server lifts the list (and says what it was), audited.
    shown = _run_cli(gw, monkeypatch, "show")
    assert "127.0.0.2/32" in shown
    out = _run_cli(gw, monkeypatch, "ip-allowlist", "clear")
    assert "lifted the organization's IP allowlist" in out and "127.0.0.2/32" in out
    assert "nothing to lift" in _run_cli(gw, monkeypatch, "ip-allowlist", "clear")

    def open_again() -> bool:
        try:
            outside.admin.organization.projects.list()
        except openai.PermissionDeniedError:
            return False
        return True

    _eventually(open_again)
    r = httpx.get(gw.v1 + "/organization/audit_logs", headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert [e["actor"]["type"] for e in r.json()["data"] if e["type"] == "ip_allowlist.deleted"] == ["cli"]

    # confirm_lockout: the caller knowingly shuts itself out.
    assert _set_org(gw, ["10.0.0.0/8"], confirm_lockout=True).status_code == 200
    _refused_admin(lambda: outside.admin.organization.projects.list(), "127.0.0.1")
    _run_cli(gw, monkeypatch, "ip-allowlist", "clear")
    _eventually(open_again)


def test_project_and_key_lists_do_not_hold_the_admin_api(gw):
    h = {"Authorization": f"Bearer {gw.admin_key}"}
    r = httpx.post(
        f"{gw.v1}/organization/projects/{gw.project_id}/ip_allowlist", json={"cidrs": ["10.0.0.0/8"]}, headers=h
    )
    assert r.status_code == 200, r.text  # no lockout check: a project's list holds only its keys on /v1
    assert _admin(gw).admin.organization.projects.list().data


def test_dashboard_is_held_to_the_org_allowlist(owner, web_server, clock):  # noqa: F811
    srv = web_server
    assert owner.get("/").status_code == 200
    assert _set_org(srv, [f"{OTHER}/32"], address=OTHER).status_code == 200
    # The signed-in session from the refused address, and the sign-in page itself: a 403 page naming it.
    for path in ("/", "/projects", "/login"):
        r = owner.get(path)
        assert r.status_code == 403, (path, r.status_code)
        assert "text/html" in r.headers["content-type"] and "127.0.0.1" in r.text and "IP allowlist" in r.text
        assert "keyplane access ip-allowlist clear" in r.text
    r = owner.post("/projects", {"name": "sneaky"})
    assert r.status_code == 403
    other = Web(srv, clock, address=OTHER)
    try:
        assert other.get("/login").status_code == 200
        other.totp_secret = owner.totp_secret  # the same person, now at an allowed address
        other.sign_in(OWNER, PASSWORD)
        assert other.get("/projects").status_code == 200
        assert "sneaky" not in other.get("/projects").text
    finally:
        other.close()


@pytest.fixture
def trusted(gateways, fake):
    from tests.proxy.conftest import fake_config

    return gateways.start(fake_config(fake), KEYPLANE_TRUSTED_PROXIES="127.0.0.1/32")


def test_admin_api_behind_a_trusted_proxy(trusted):
    srv = trusted
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    url = f"{srv.v1}/organization/ip_allowlist"
    # The address the lockout check sees is the forwarded one, as for every other check.
    r = httpx.post(url, json={"cidrs": ["10.0.0.0/8"]}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "ip_allowlist_lockout"
    r = httpx.post(url, json={"cidrs": ["10.0.0.0/8"]}, headers={**h, "X-Forwarded-For": "10.1.2.3"})
    assert r.status_code == 200, r.text
    assert httpx.get(url, headers={**h, "X-Forwarded-For": "10.1.2.3"}).status_code == 200
    r = httpx.get(url, headers={**h, "X-Forwarded-For": "10.1.2.3, 192.0.2.9"})
    assert r.status_code == 403 and "192.0.2.9" in r.json()["error"]["message"]
    r = httpx.get(srv.base_url + "/login", headers={"X-Forwarded-For": "192.0.2.9"})
    assert r.status_code == 403 and "192.0.2.9" in r.text
    assert httpx.get(srv.base_url + "/login", headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 200


def test_every_admin_endpoint_is_held(gw):
    """Every route of the admin API, the features' included, refuses an address off the organization's list,
    with a valid admin key, before doing anything (even reading its body or looking its object up)."""
    import re

    from keyplane.admin import ENDPOINTS

    assert _set_org(gw, [OTHER], address=OTHER).status_code == 200
    endpoints = [*ENDPOINTS, *(e for f in gw.app._features for e in f.endpoints)]
    assert len(endpoints) > 50
    h = {"Authorization": f"Bearer {gw.admin_key}"}
    wrong = []
    with _from("127.0.0.1") as c:
        for e in endpoints:
            path = re.sub(r"\{[^}]+\}", "x_1", e.path)
            r = c.request(e.method, gw.base_url + path, headers=h, json={} if e.method == "POST" else None)
            if r.status_code != 403 or r.json()["error"]["code"] != "ip_not_allowed":
                wrong.append((e.method, e.path, r.status_code, r.text[:100]))
    assert wrong == []
