"""Provisioning per project (issue #18 item 6): a keyplane project bound to a provider project is forwarded with
the key of keyplane's own service account there; rotation makes the new key first, swaps, then deletes the
old one; unbinding deletes the account. The key value is never shown, logged or stored in clear."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import select
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.config import Upstream
from keyplane.providers.bindings import KeyBox, UpstreamKeys
from keyplane.providers.models import ProviderBinding
from keyplane.proxy.router import Breaker, Deployment

SHARED = "sk-proj-shared-upstream-key-0000"


def _config(url: str) -> str:
    return (
        f'[[providers]]\nname = "acme"\nbase_url = "{url}"\nadmin_key_env = "ACME_ADMIN_KEY"\nsync_interval = 0\n\n'
        f'[[upstreams]]\nname = "openai"\nbase_url = "{url}"\napi_key_env = "KP_SHARED_KEY"\n'
        'models = ["gpt-*"]\nretry_backoff = 0.01\n'
    )


@pytest.fixture
def gateway(gateways, fake_provider, monkeypatch):
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    monkeypatch.setenv("KP_SHARED_KEY", SHARED)
    yield gateways.start(_config(fake_provider.base_url))
    gateways.stop_all()  # before the fake provider stops


def _admin(srv, method: str, path: str, body: dict | None = None, status: int = 200) -> dict:
    r = httpx.request(
        method,
        f"{srv.v1}/organization{path}",
        json=body,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        timeout=20,
    )
    assert r.status_code == status, r.text
    return r.json()


def _chat(srv, key: str) -> None:
    client = OpenAI(base_url=srv.v1, api_key=key, max_retries=0)
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "ok"


def _secrets_seen(fake) -> list[str]:
    return [v for k, v in fake.secrets.items() if k.startswith("key_sa")]


def test_bind_forward_rotate_unbind(gateway, fake_provider):
    fake, srv = fake_provider.fake, gateway
    other = _admin(srv, "POST", "/projects", {"name": "billing-svc"})
    key = _admin(srv, "POST", f"/projects/{other['id']}/api_keys", {"name": "svc", "permissions": "all"})["value"]

    _chat(srv, key)
    assert fake.model_calls == [("shared", "gpt-4o")]

    bound = _admin(srv, "POST", "/providers/bindings", {"project_id": "billing-svc", "provider_project_id": "proj_web"})
    assert bound["project_id"] == other["id"] and bound["provider"] == "acme"
    sa, first = bound["service_account_id"], bound["key_id"]
    assert any(a["id"] == sa for a in fake.service_accounts["proj_web"]) and first in fake.key_ids()
    assert ("POST", "/v1/organization/projects/proj_web/service_accounts", "") in fake.requests

    _chat(srv, key)  # the bound project: its own key
    _chat(srv, srv.api_key)  # the default project: the shared key, as before
    assert fake.model_calls[1:] == [(first, "gpt-4o"), ("shared", "gpt-4o")]

    _admin(
        srv, "POST", "/providers/bindings", {"project_id": other["id"], "provider_project_id": "proj_web"}, status=409
    )
    _admin(srv, "POST", "/providers/bindings", {"project_id": "nope", "provider_project_id": "proj_web"}, status=404)
    _admin(
        srv,
        "POST",
        "/providers/bindings",
        {"project_id": srv.project_id, "provider_project_id": "proj_none"},
        status=404,
    )

    rotated = _admin(srv, "POST", f"/providers/bindings/{other['id']}/rotate", {"grace_seconds": 0})
    second = rotated["key_id"]
    assert second != first and rotated["retired_key_id"] == first and rotated["service_account_id"] == sa
    _chat(srv, key)  # swapped at once on this instance
    assert fake.model_calls[-1] == (second, "gpt-4o")
    deadline = time.monotonic() + 15
    while first in fake.key_ids():  # the old key is deleted at the provider after the grace (reload loop)
        assert time.monotonic() < deadline, "the rotated-out key was never deleted"
        time.sleep(0.1)  # poll interval (a deadline loop)
    assert _admin(srv, "GET", "/providers/bindings")["data"][0]["retired_key_id"] is None

    listed = _admin(srv, "GET", "/providers/bindings")["data"]
    assert [(b["project_id"], b["key_id"]) for b in listed] == [(other["id"], second)]

    gone = _admin(srv, "DELETE", f"/providers/bindings/{other['id']}")
    assert gone["deleted"] and not any(a["id"] == sa for a in fake.service_accounts["proj_web"])
    assert second not in fake.key_ids()
    _chat(srv, key)
    assert fake.model_calls[-1] == ("shared", "gpt-4o")
    _admin(srv, "DELETE", f"/providers/bindings/{other['id']}", status=404)

    # The key values: never in an answer, the audit log, or the store in clear.
    audit = json.dumps(_admin(srv, "GET", "/audit_logs?limit=100"))
    assert "provider.binding.created" in audit and "provider.binding.rotated" in audit
    for secret in _secrets_seen(fake):
        assert secret not in audit and secret not in json.dumps([bound, rotated, listed, gone])

    async def rows():
        async with srv.app.runtime.engine.connect() as c:
            return (await c.execute(select(ProviderBinding.__table__))).all()

    assert srv.call(rows()) == []


def test_reader_admin_key_cannot_bind(gateway):
    srv = gateway
    reader = _admin(srv, "POST", "/admin_api_keys", {"name": "ro", "role": "reader"})
    r = httpx.post(
        f"{srv.v1}/organization/providers/bindings",
        json={"project_id": srv.project_id, "provider_project_id": "proj_web"},
        headers={"Authorization": f"Bearer {reader['value']}"},
    )
    assert r.status_code == 403


def _dep(name: str, url: str, projects: list[str] | None = None) -> Deployment:
    return Deployment(
        Upstream(name=name, base_url=url, projects=projects or []), "shared", Breaker(5, 30.0), re.compile(".*")
    )


def test_hook_swaps_only_the_bound_providers_shared_upstreams():
    box = KeyBox(b"s" * 32)
    from keyplane.config import ProviderSection

    keys = UpstreamKeys([ProviderSection(name="acme", base_url="https://api.openai.com/v1/", admin_key_env="K")], box)
    from keyplane.providers.bindings import _Bound

    keys.bound = {
        "proj_a": _Bound("https://api.openai.com/v1", "sk-own"),
        "proj_b": _Bound("https://api.openai.com/v1", None),
    }
    openai, other, dedicated = (
        _dep("openai", "https://api.openai.com/v1"),
        _dep("azure", "https://x.example/v1"),
        _dep("mine", "https://api.openai.com/v1", ["proj_a"]),
    )
    pool = (openai, other, dedicated)
    out = keys.apply("proj_a", pool)
    assert [d.api_key for d in out] == ["sk-own", "shared", "shared"] and out[0].breaker is openai.breaker
    assert keys.apply("proj_a", pool)[0] is out[0]  # the copy is reused
    assert keys.apply("proj_c", pool) is pool  # not bound: untouched
    assert [d.name for d in keys.apply("proj_b", pool)] == ["azure", "mine"]  # unreadable key: fail closed
    assert keys.apply(None, pool) is pool


def test_a_sealed_key_needs_the_server_secret():
    sealed = KeyBox(b"a" * 32).seal("sk-svcacct-value")
    assert "sk-svcacct-value" not in sealed
    assert KeyBox(b"a" * 32).open(sealed) == "sk-svcacct-value" and KeyBox(b"b" * 32).open(sealed) is None


@pytest.fixture
def cli(tmp_path, monkeypatch, fake_provider):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keyplane.toml").write_text(_config(fake_provider.base_url))
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", "")
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    monkeypatch.setenv("KP_SHARED_KEY", SHARED)
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        for secret in [fake_provider.fake.admin_key, *_secrets_seen(fake_provider.fake)]:
            assert secret not in res.stdout + res.stderr
        return res

    return run


def test_cli_bind_rotate_unbind(cli, fake_provider):
    fake = fake_provider.fake
    cli("init", "--json")
    b = json.loads(cli("providers", "bind", "Default project", "proj_data", "--json").stdout)
    assert b["provider_project_id"] == "proj_data" and b["key_id"] in fake.key_ids()
    assert "already bound" in cli("providers", "bind", "Default project", "proj_data", code=1).stderr
    assert "not bound" in cli("providers", "rotate", "nope", code=1).stderr
    r = json.loads(cli("providers", "rotate", "Default project", "--grace", "0", "--json").stdout)
    assert r["retired"] == [b["key_id"]] and b["key_id"] not in fake.key_ids() and r["key_id"] in fake.key_ids()
    listed = json.loads(cli("providers", "bindings", "--json").stdout)
    assert [x["key_id"] for x in listed] == [r["key_id"]]
    assert "proj_data" in cli("providers", "bindings").stdout
    u = json.loads(cli("providers", "unbind", "Default project", "--grace", "0", "--json").stdout)
    assert u["deleted"] and r["key_id"] not in fake.key_ids()
    assert json.loads(cli("providers", "bindings", "--json").stdout) == []


def test_binding_a_project_takes_authority_over_that_project(gateway, fake_provider):
    """Binding decides where a project's traffic goes and on which provider key; rotating or removing a binding
    changes that too. An organization permission alone (a custom role with api.organization.write, the
    permission of the /providers calls) is not enough: each takes what changing the project directly takes."""
    from tests.members.support import user_with_key
    from tests.redteam.test_wk50_round6 import _admin_key_of

    srv = gateway
    owner = {"Authorization": f"Bearer {srv.admin_key}"}
    with httpx.Client(base_url=srv.v1 + "/organization", headers=owner, timeout=20) as http:
        other = http.post("/projects", json={"name": "billing-svc"}).json()
        people = http.post(
            "/roles", json={"role_name": "ops", "permissions": ["api.organization.read", "api.organization.write"]}
        ).json()
        user, _ = user_with_key(srv, http, "ops@example.com")
        assert http.post(f"/users/{user['id']}/roles", json={"role_id": people["id"]}).status_code == 200
        ops = {"Authorization": f"Bearer {_admin_key_of(srv, user['id'])}"}
        terms = {"project_id": other["id"], "provider_project_id": "proj_web"}
        r = http.post("/providers/bindings", headers=ops, json=terms)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions", r.text
        assert http.post("/providers/bindings", json=terms).status_code == 200  # the owner binds it
        for method, path in (
            ("POST", f"/providers/bindings/{other['id']}/rotate"),
            ("DELETE", f"/providers/bindings/{other['id']}"),
        ):
            r = http.request(method, path, headers=ops, json={} if method == "POST" else None)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions", (path, r.text)
        assert [b["project_id"] for b in http.get("/providers/bindings").json()["data"]] == [other["id"]]
