# ruff: noqa: F811 - the fixtures shared from tests/identity are parameters here
"""Week 50 red-team review, round 16: everything around the data plane, attacked by someone holding one of a
project member's dashboard login, a project-scoped admin key (a reader with a project role), a read-only or
restricted key, a keyless service account's workload token, or a realtime client secret: the admin API's role
and project boundaries, the Usage/Costs APIs and metrics, the dashboard (CSRF, the second factor, sessions), key
lifecycle (rotation, suspension, archived projects, workload tokens, background work started before a stop), the
response cache and the leaked-key scanner. Each test states the secure behaviour and failed on the code as this
round found it; each passes with its fix: 1 (the batches and jobs a workload token started outlived its rule or
provider being disabled: billing/batch_poll.stop_reason), 2 (an admin key read /metrics from off the organization's
IP allowlist: usage/metrics.py) and 3 (a project's administrator renamed it into a name the configuration dedicates
an upstream or the org-wide cache namespace to: control.update_project, FileConfig.project_refs)
(tests/redteam/conftest.py: a gateway on the fake upstream, in-process limiter)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
import openai
import orjson
from openai import OpenAI

from keyplane.testing.fake_oidc import FakeOIDC
from tests.identity.conftest import idp, idp_session  # noqa: F401 - the fixtures, shared
from tests.proxy.conftest import admin
from tests.redteam.test_wk49_identity import AUD, GRANT, SUB, _setup
from tests.support import RunningServer


def _client(srv: RunningServer, key: str) -> OpenAI:
    return OpenAI(base_url=srv.v1, api_key=key, max_retries=0)


# --- background work of a workload token ------------------------------------------------------------------------


def _workload(srv: RunningServer, idp: FakeOIDC) -> tuple[str, str, str, str]:
    """A service account bound to a federation rule: (provider id, rule id, service account id, access token)."""
    prov_id, sa_id, rule_id = _setup(srv, idp)
    r = httpx.post(
        srv.base_url + "/oauth/token",
        json={
            "grant_type": GRANT,
            "subject_token": idp.sign({"sub": SUB, "aud": AUD}),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "identity_provider_id": prov_id,
            "service_account_id": sa_id,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return prov_id, rule_id, sa_id, r.json()["access_token"]


def _batch(srv: RunningServer, fake: Any, key: str) -> str:
    """A batch left running at the provider, created with ``key``: its id."""
    fake.objects.batch_status = "in_progress"
    c = _client(srv, key)
    line = {
        "custom_id": "r-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    }
    f = c.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def _cancelled_within(srv: RunningServer, fake: Any, batch_id: str, seconds: float = 5) -> bool:
    batches = srv.app.runtime.features.batches
    deadline = time.monotonic() + seconds
    while fake.objects.batches[batch_id]["status"] not in ("cancelling", "cancelled"):
        if time.monotonic() > deadline:
            return False
        batches.poller.polled.clear()
        srv.call(batches.poll(min_age=0))
        time.sleep(0.1)  # poll interval (a deadline loop)
    return True


def test_a_workload_tokens_batch_is_cancelled_when_its_rule_is_disabled(make_gw, fake, idp):
    """Disabling a federation rule (or its provider) is how an operator stops a workload whose identity was
    stolen: its access tokens, client secrets, realtime sessions and HTTP streams end at once. But the batches,
    fine-tuning jobs and eval runs the stolen token had started went on running (and spending) at the provider:
    the background poll cancels the work of revoked or suspended keys and archived projects only, and a disabled
    rule leaves its keyless key row active. Secure: work started with a workload token is cancelled once its
    rule or provider is disabled, as a revoked key's is."""
    srv = make_gw()
    pid, rid, _, token = _workload(srv, idp)
    b1 = _batch(srv, fake, token)
    admin(srv, "POST", f"/workload_identity_providers/{pid}/federation_rules/{rid}", {"enabled": False})
    assert _cancelled_within(srv, fake, b1), "the disabled rule's batch still runs at the provider"


def test_a_workload_tokens_batch_is_cancelled_when_its_provider_is_disabled(make_gw, fake, idp):
    """As above, the workload identity provider disabled instead of the rule."""
    srv = make_gw()
    pid, _, _, token = _workload(srv, idp)
    b1 = _batch(srv, fake, token)
    admin(srv, "POST", f"/workload_identity_providers/{pid}", {"enabled": False})
    assert _cancelled_within(srv, fake, b1), "the disabled provider's batch still runs at the provider"


# --- the organization's IP allowlist and /metrics -----------------------------------------------------------------


def test_an_admin_key_off_the_organizations_ip_allowlist_reads_no_metrics(make_gw):
    """The organization's IP allowlist holds every use of an admin key (the admin API, the dashboard): a leaked
    admin key used from elsewhere is refused before it is even looked at. But /metrics took the admin key as
    its credential without the allowlist: from any address, a leaked admin key still read the organization's
    requests, tokens and cost per project (and per key, with key labels) and the rejection reasons. Secure: an
    admin key presented to /metrics from an address off the organization's list is refused (403
    ip_not_allowed), as on the admin API."""
    srv = make_gw()
    url = srv.base_url + "/metrics"
    auth = {"Authorization": f"Bearer {srv.admin_key}"}
    assert httpx.get(url, headers=auth).status_code == 200
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), headers=auth, timeout=20) as at:
        r = at.post(srv.v1 + "/organization/ip_allowlist", json={"cidrs": ["127.0.0.2/32"]})
        assert r.status_code == 200, r.text
        assert at.get(url).status_code == 200  # the listed address still reads them
    assert httpx.get(srv.v1 + "/organization/projects", headers=auth).status_code == 403  # the admin API refuses
    r = httpx.get(url, headers=auth)
    assert r.status_code == 403, f"/metrics answered {r.status_code} to an admin key off the allowlist"
    assert r.json()["error"]["code"] == "ip_not_allowed"


# --- a project's name in the configuration ------------------------------------------------------------------------


def _project_writer(srv: RunningServer, project_id: str) -> str:
    """An admin key of a reader who holds api.project.write in ``project_id`` only (a project role): a project's
    own administrator, nothing organization-wide."""
    from keyplane import control

    user = admin(srv, "POST", "/users", {"email": f"lead-{time.monotonic_ns()}@example.com", "role": "reader"})
    admin(srv, "POST", f"/projects/{project_id}/users", {"user_id": user["id"], "role": "owner"})
    role = admin(
        srv, "POST", f"/projects/{project_id}/roles", {"role_name": "lead", "permissions": ["api.project.write"]}
    )
    admin(srv, "POST", f"/projects/{project_id}/users/{user['id']}/roles", {"role_id": role["id"]})

    async def make_key() -> str:
        async with srv.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s, control.CLI_ACTOR, srv.settings.secret_key, "lead", owner_user_id=user["id"]
            )
            return value

    return srv.call(make_key())  # type: ignore[no-any-return]


def test_a_project_cannot_take_another_projects_dedicated_upstream_by_its_name(make_gw, monkeypatch):
    """An upstream dedicated to a project (`[[upstreams]] projects = ["team-a"]`: team A's own provider credential,
    account and objects) names it by id or by name, and the router matched the name a project has now. Renaming
    a project takes only api.project.write in that project (a project role): the administrator of project Z
    renamed Z to "team-a" and Z's keys went out with team A's provider key, into team A's provider account.
    Secure: the admin API refuses to give a project a name the configuration dedicates something to (or to take
    it away from one, which would drop that project onto the shared credential); nothing of Z reaches team A's
    upstream."""
    from aiohttp import web

    from tests.redteam.conftest import serve_routes

    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(
            {
                "id": "chatcmpl-a",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    port = serve_routes({"/v1/chat/completions": chat})
    monkeypatch.setenv("KP_TEAM_A_KEY", "sk-team-a-provider-key")
    srv = make_gw(
        f'\n[[upstreams]]\nname = "team-a-openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        'api_key_env = "KP_TEAM_A_KEY"\nmodels = ["gpt-*"]\nprojects = ["team-a"]\n'
    )
    msg = [{"role": "user", "content": "hi"}]
    team_a = admin(srv, "POST", "/projects", {"name": "team-a"})
    a_key = admin(srv, "POST", f"/projects/{team_a['id']}/api_keys", {"name": "k"})["value"]
    _client(srv, a_key).chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=msg)  # type: ignore[arg-type]
    assert seen == ["Bearer sk-team-a-provider-key"]  # team A's requests go to its own upstream

    z = srv.project_id
    lead = _project_writer(srv, z)
    r = httpx.post(
        f"{srv.v1}/organization/projects/{z}",
        json={"name": "team-a"},
        headers={"Authorization": f"Bearer {lead}"},
        timeout=10,
    )
    with contextlib.suppress(openai.APIError):  # refused is as good: what matters is where it went
        _client(srv, srv.api_key).chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=msg)  # type: ignore[arg-type]
    assert len(seen) == 1, "project Z's request went out with team A's provider key after Z took its name"
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "project_name_reserved"
    # Nor may team A's own name be taken away through the API (its keys would fall back to the shared key).
    r = httpx.post(
        f"{srv.v1}/organization/projects/{team_a['id']}",
        json={"name": "team-b"},
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_name_reserved", r.text


def test_a_project_cannot_join_the_organization_wide_cache_by_renaming_itself(make_gw):
    """`[cache] org_wide_projects = ["Docs bot"]` shares one response-cache namespace between the projects named
    there, matched by the name a project has now. The administrator of project Z (api.project.write in Z only)
    renamed Z to "Docs bot" and Z's keys were answered from the cache the docs bot filled: another project's
    answers, read by sending its requests. Secure: the rename is refused (400 project_name_reserved) and Z's
    identical request is not a hit."""
    srv = make_gw('\n[cache]\norg_wide_projects = ["Docs bot"]\n')
    bot = admin(srv, "POST", "/projects", {"name": "Docs bot"})
    bot_key = admin(srv, "POST", f"/projects/{bot['id']}/api_keys", {"name": "k"})["value"]
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "temperature": 0, "messages": [{"role": "user", "content": "q"}]}

    def ask(key: str) -> str | None:
        r = httpx.post(f"{srv.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.headers.get("x-keyplane-cache")

    assert ask(bot_key) == "miss" and ask(bot_key) == "hit"
    z = srv.project_id
    lead = _project_writer(srv, z)
    r = httpx.post(
        f"{srv.v1}/organization/projects/{z}",
        json={"name": "Docs bot"},
        headers={"Authorization": f"Bearer {lead}"},
        timeout=10,
    )
    assert ask(srv.api_key) != "hit", "project Z was answered from the docs bot's cache after taking its name"
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_name_reserved", r.text
