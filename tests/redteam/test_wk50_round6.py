"""Week 50 red-team review, round 6: request shapes a holder of a valid (restricted, limited) key might use to
get past a hard spend limit, a permission, tenancy or a revocation. Each test failed while its hole was open,
unless its docstring says it held (tests/redteam/conftest.py: the gateway on the fake upstream, PRICED
gpt-4o-mini: $0 input, $1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import gzip
import zlib

import httpx
import orjson
import pytest

from tests.identity.conftest import gateway, idp, idp_session  # noqa: F401 - the fixtures, shared
from tests.proxy.test_integrity import raw_http
from tests.redteam.test_wk49_round4 import _client, _project

# --- compressed request bodies ------------------------------------------------------------------------------


def _compressed(body: bytes, how: str) -> bytes:
    return gzip.compress(body) if how == "gzip" else zlib.compress(body)


@pytest.mark.parametrize("how", ["gzip", "deflate", "GZip", "identity, gzip"])
def test_a_compressed_body_cannot_hide_another_projects_objects(make_gw, fake, how):
    """Round 2 refused compressed bodies on the model and spending endpoints (where keyplane reads the output
    limit), but not on the other POSTs: there the ownership check reads the ids a body names (`file_ids`,
    `vector_store_ids`, `file_id`...) from the bytes as sent. A gzip or deflate body shows none of them, so it
    passed unchecked, and went upstream with its Content-Encoding: an upstream that inflates request bodies
    (aiohttp servers do by default, as do many front proxies) read project A's file ids in project B's call
    (a vector store of B's built from A's files, a thread message carrying A's file). Now a request body keyplane
    would read another way than the upstream is refused on every endpoint."""
    srv = make_gw()
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    theirs = _client(srv, key_a).files.create(file=("notes.txt", b"A's private notes"), purpose="assistants")
    mine = _client(srv, key_b).vector_stores.create(name="B's store")
    calls = [
        ("/v1/vector_stores", {"name": "B's", "file_ids": [theirs.id]}),
        (f"/v1/vector_stores/{mine.id}/files", {"file_id": theirs.id}),
        (f"/v1/vector_stores/{mine.id}/file_batches", {"file_ids": [theirs.id]}),
        ("/v1/threads", {"messages": [{"role": "user", "content": "x", "attachments": [{"file_id": theirs.id}]}]}),
    ]
    enc = how.split(",")[-1].strip().lower()
    fake.requests.clear()
    for path, body in calls:
        # the same call uncompressed is refused by the ownership check: the gzip one must not do better
        plain, _, _ = raw_http(
            srv.base_url,
            "POST",
            path,
            {"Authorization": f"Bearer {key_b}", "Content-Type": "application/json"},
            orjson.dumps(body),
        )
        assert plain == 404, path
        status, _, answer = raw_http(
            srv.base_url,
            "POST",
            path,
            {"Authorization": f"Bearer {key_b}", "Content-Type": "application/json", "Content-Encoding": how},
            _compressed(orjson.dumps(body), enc),
        )
        assert status == 400, (path, status, answer)
        assert orjson.loads(answer)["error"]["code"] == "unsupported_encoding"
    assert [r.path for r in fake.model_requests()] == []


def test_a_compressed_batch_file_is_refused_at_the_upload(make_gw, fake):
    """The lines of a batch input file are read at POST /v1/files (round 4); a compressed upload is read as
    nothing keyplane can check."""
    srv = make_gw()
    _, key = _project(srv)
    line = orjson.dumps(
        {
            "custom_id": "r-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        }
    )
    boundary = "kpbound"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + line
        + f"\n\r\n--{boundary}--\r\n".encode()
    )
    fake.requests.clear()
    status, _, answer = raw_http(
        srv.base_url,
        "POST",
        "/v1/files",
        {
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Encoding": "gzip",
        },
        gzip.compress(form),
    )
    assert status == 400 and orjson.loads(answer)["error"]["code"] == "unsupported_encoding", answer
    assert fake.model_requests() == []


# --- what api.organization.write reaches inside projects -----------------------------------------------------


def test_a_federation_rule_mints_keys_only_in_projects_its_creator_may_make_keys_in(gateway, idp):  # noqa: F811
    """Invites could add members to projects their sender could not manage (fixed this round). The same shape:
    a federation rule names a project and one of its service accounts, and every workload token it matches is
    exchanged for a key of that service account, with the rule's permissions. Creating one took only
    api.organization.write (the path is not under /projects), so a user trusted with people management but given
    no authority over a project (creating a key in it directly is 403) could register an issuer they control and
    a rule for the project's service account, and call the API as that project: spend its budget, read its files
    and stored responses. Widening an existing rule (its matchers, permissions) or pointing its provider at
    another issuer did the same. Now each takes what creating the key directly takes, in the rule's project."""
    from tests.members.support import user_with_key
    from tests.redteam.test_wk49_identity import AUD, SUB, _exchange

    owner = {"Authorization": f"Bearer {gateway.admin_key}"}
    with httpx.Client(base_url=gateway.v1 + "/organization", headers=owner, timeout=10) as http:
        pid = gateway.project_id
        sa = http.post(f"/projects/{pid}/service_accounts", json={"name": "ci"}).json()
        people = http.post(
            "/roles", json={"role_name": "people", "permissions": ["api.organization.read", "api.organization.write"]}
        ).json()
        user, _ = user_with_key(gateway, http, "hr@example.com")
        assert http.post(f"/users/{user['id']}/roles", json={"role_id": people["id"]}).status_code == 200
        hr = {"Authorization": f"Bearer {_admin_key_of(gateway, user['id'])}"}
        # directly, no key of the project's service account
        made = http.post(f"/projects/{pid}/service_accounts/{sa['id']}/api_keys", json={"name": "x"}, headers=hr)
        assert made.status_code == 403
        issuer = {"issuer": idp.issuer, "audience": AUD, "verification": {"type": "discovery", "discovery_url": None}}
        prov = http.post("/workload_identity_providers", headers=hr, json={"name": "mine", "type": "oidc", **issuer})
        assert prov.status_code == 200, prov.text  # a provider alone hands out nothing
        rules = f"/workload_identity_providers/{prov.json()['id']}/federation_rules"
        terms = {"project_id": pid, "service_account_id": sa["id"], "attribute_matchers": {"sub": SUB}}
        rule = http.post(rules, headers=hr, json=terms)
        if rule.status_code == 200:  # what it gave: a key acting in the project
            got = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), prov.json()["id"], sa["id"])
            assert got.status_code == 200 and got.json()["access_token"].startswith("sk-kp-")
        assert rule.status_code == 403, rule.text
        assert rule.json()["error"]["code"] == "insufficient_permissions"
        # a rule the owner made: widening it, or its provider, is the project's business too
        rid = http.post(rules, json=terms).json()["id"]
        for path, body in (
            (f"{rules}/{rid}", {"attribute_matchers": {"sub": "*"}}),
            (f"{rules}/{rid}", {"permissions": {"type": "all"}}),
            (f"{rules}/{rid}", {"enabled": True}),
            (f"/workload_identity_providers/{prov.json()['id']}", {"issuer": "https://evil.example.com"}),
            (f"/workload_identity_providers/{prov.json()['id']}", {"audience": "anything"}),
        ):
            r = http.post(path, headers=hr, json=body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions", (
                path,
                body,
                r.text,
            )
        # what hands out nothing more stays theirs to do
        assert http.post(f"{rules}/{rid}", headers=hr, json={"name": "renamed", "enabled": False}).status_code == 200
        # with authority over the project (a project role with api.project.write there), the rule is theirs to make
        http.post(f"/projects/{pid}/users", json={"user_id": user["id"], "role": "member"})
        writer = http.post(
            f"/projects/{pid}/roles", json={"role_name": "w", "permissions": ["api.project.write"]}
        ).json()
        assert http.post(f"/projects/{pid}/users/{user['id']}/roles", json={"role_id": writer["id"]}).status_code == 200
        assert http.post(rules, headers=hr, json={**terms, "attribute_matchers": {"sub": "other"}}).status_code == 200


def _admin_key_of(srv, user_id: str) -> str:  # type: ignore[no-untyped-def]
    from keyplane import control

    async def make() -> str:
        async with srv.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s, control.CLI_ACTOR, srv.settings.secret_key, "hr key", owner_user_id=user_id
            )
            return value

    return srv.call(make())  # type: ignore[no-any-return]


# --- held: kept so that they go on holding ----------------------------------------------------------------------


def test_held_another_projects_stored_objects_by_every_path_spelling(make_gw, fake):
    """Held: a stored response or chat completion of project A, named by project B through the sub-resource
    paths (input_items, messages, cancel, delete), percent-encoded, with a query string, or as a
    `previous_response_id` / `conversation` in a body, is 404 (or 400 for a path read two ways) before any
    upstream call."""
    srv = make_gw()
    pid_a, key_a = _project(srv)
    _, key_b = _project(srv)
    a = _client(srv, key_a)
    resp = a.responses.create(model="gpt-4o-mini", input="secret of A", max_output_tokens=5)
    chat = a.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "secret"}], max_tokens=5, store=True
    )
    encoded = "".join(f"%{ord(c):02X}" for c in resp.id)
    attempts = [
        ("GET", f"/v1/responses/{resp.id}", b""),
        ("GET", f"/v1/responses/{resp.id}/input_items", b""),
        ("GET", f"/v1/responses/{resp.id}/input_items?limit=100&order=asc", b""),
        ("GET", f"/v1/responses/{encoded}/input_items", b""),
        ("POST", f"/v1/responses/{resp.id}/cancel", b"{}"),
        ("DELETE", f"/v1/responses/{resp.id}", b""),
        ("GET", f"/v1/chat/completions/{chat.id}", b""),
        ("GET", f"/v1/chat/completions/{chat.id}/messages", b""),
        ("POST", f"/v1/chat/completions/{chat.id}", b'{"metadata":{"a":"b"}}'),
        ("GET", f"/v1/responses//{resp.id}", b""),
        ("GET", f"/v1/responses/x/../{resp.id}", b""),
        (
            "POST",
            "/v1/responses",
            orjson.dumps({"model": "gpt-4o-mini", "input": "go on", "previous_response_id": resp.id}),
        ),
        (
            "POST",
            "/v1/responses",
            orjson.dumps({"model": "gpt-4o-mini", "input": "go on", "conversation": {"id": resp.id}}),
        ),
        (
            "POST",
            "/v1/responses/input_tokens",
            orjson.dumps({"model": "gpt-4o-mini", "input": "x", "previous_response_id": resp.id}),
        ),
        (
            "POST",
            "/v1/responses/compact",
            orjson.dumps({"model": "gpt-4o-mini", "previous_response_id": resp.id}),
        ),
    ]
    fake.requests.clear()
    for method, path, body in attempts:
        h = {"Authorization": f"Bearer {key_b}", "Content-Type": "application/json"}
        status, _, answer = raw_http(srv.base_url, method, path, h, body)
        assert status in (400, 404), (method, path, status, answer)
        # naming A's project in the header does not make B's key act there
        status, _, answer = raw_http(srv.base_url, method, path, {**h, "OpenAI-Project": pid_a}, body)
        assert orjson.loads(answer)["error"]["code"] in ("mismatched_project", "invalid_path"), answer
    assert fake.model_requests() == []
