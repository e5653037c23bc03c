"""Week 50 red-team review, round 8: the admin API's roles, revocation while a request is in flight, and this
round's new code (token-priced transcriptions, the duplicate-key refusal). Each test states the secure
behaviour and fails against the code it was written on; the others held and are kept so that they go on holding
(tests/redteam/conftest.py: the gateway on the fake upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output
tokens, in-process limiter)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from aiohttp import web

from keyplane.testing.fake_upstream import Behaviour
from tests.billing.conftest import UPSTREAM_KEY_ENV
from tests.members.support import make_member
from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_in_thread
from tests.redteam.test_wk49_round4 import _client, _limit, _project, _spent
from tests.redteam.test_wk50_round6 import _admin_key_of

MSG = [{"role": "user", "content": "hi"}]


def _post(srv, key: str, path: str, raw: bytes):  # type: ignore[no-untyped-def]
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(srv.v1 + path, content=raw, headers=h, timeout=30)


def _code(r: httpx.Response) -> str | None:
    return r.json().get("error", {}).get("code") if r.status_code >= 400 else None


# --- token-priced transcriptions: the usage a streamed answer reports -----------------------------------------

# What the provider bills this call (gpt-4o-transcribe, shipped prices: text in $2.50, audio in $6, out $10 per
# 1M): 13,000 text tokens of `prompt`, 1,000 audio tokens, 2,000 output tokens = 32,500 + 6,000 + 20,000 micros.
_REPORTED = {
    "type": "tokens",
    "input_tokens": 14_000,
    "input_token_details": {"text_tokens": 13_000, "audio_tokens": 1_000},
    "output_tokens": 2_000,
    "total_tokens": 16_000,
}
_BILLED_BY_PROVIDER = 13_000 * 5 // 2 + 1_000 * 6 + 2_000 * 10


class _StreamingTranscriber:
    """A provider answering `stream=true` transcriptions as OpenAI does: `transcript.text.delta` events, then
    `transcript.text.done` carrying the call's token usage."""

    def __init__(self) -> None:
        self.calls = 0

        async def transcribe(req: web.Request) -> web.StreamResponse:
            form = await req.post()
            self.calls += 1
            if form.get("stream") != "true":
                return web.json_response({"text": "hi", "usage": _REPORTED})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            await resp.write(b'data: {"type":"transcript.text.delta","delta":"hi"}\n\n')
            done = {"type": "transcript.text.done", "text": "hi", "usage": _REPORTED}
            await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
            return resp

        self.port = serve_in_thread("/v1/audio/transcriptions", transcribe, client_max_size=8 * 1024**2)

    def config(self) -> str:
        return (
            f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{self.port}/v1"\n'
            f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 0\n'
        )


def _transcribe(srv, key: str, stream: bool) -> httpx.Response:  # type: ignore[no-untyped-def]
    data = {"model": "gpt-4o-transcribe", "prompt": "word " * 13_000}
    if stream:
        data["stream"] = "true"
    return httpx.post(
        srv.v1 + "/audio/transcriptions",
        headers={"Authorization": f"Bearer {key}"},
        data=data,
        files={"file": ("a.ogg", b"OggS" + b"\0" * 996, "audio/ogg")},
        timeout=30,
    )


def test_a_streamed_token_priced_transcription_is_billed_the_tokens_it_reports(make_gw):
    """gpt-4o-transcribe is "billed the tokens the answer reports, else the per-minute estimate" (docs/limits-and-
    billing.md). Its `stream=true` form answers `text/event-stream`, whose `transcript.text.done` event carries
    the usage. proxy/handler.py sends transcriptions in OBJECT mode (usage.READ_WHOLE): an answer that is not
    application/json goes out RAW (forward._accept), fill_units never sees it, and settle (billing/settle.py,
    the `per_minute` branch) bills the per-minute estimate of the upload's SIZE (here 65 KB: two minutes, $0.012),
    whatever the `prompt` (text input tokens, up to the 16,000-token context) and the output. The provider bills
    the tokens it reports: $0.0585 here, ~5x. Each call fits
    its reservation (the context-window bound), but the ledger keeps the estimate, so the next calls are admitted
    against spend that is not there: under a $0.20 limit ($0.116 reserved each) 8 such calls pass, $0.47 of
    provider spend. The same call without `stream` is billed its tokens (asserted first)."""
    up = _StreamingTranscriber()
    srv = make_gw(config_text=up.config())
    plain = _transcribe(srv, srv.api_key, stream=False)
    assert plain.status_code == 200, plain.text
    assert _spent(srv, srv.project_id)[0] == _BILLED_BY_PROVIDER  # the JSON form: its tokens
    r = _transcribe(srv, srv.api_key, stream=True)
    assert r.status_code == 200 and b"transcript.text.done" in r.content, r.text[:200]
    assert _spent(srv, srv.project_id)[0] >= 2 * _BILLED_BY_PROVIDER, _spent(srv, srv.project_id)


# --- the duplicate-key refusal: keys a parser reads as one --------------------------------------------------

_CASE_DUPS = [
    # Ollama (and LocalAI) are Go: encoding/json matches a key to a field case-insensitively and the last match wins
    b'{"model":"gpt-4o-mini","max_tokens":5,"MAX_TOKENS":100000,"messages":[{"role":"user","content":"x"}]}',
    b'{"model":"gpt-4o-mini","max_tokens":5,"Max_Tokens":100000,"messages":[{"role":"user","content":"x"}]}',
    b'{"model":"gpt-4o-mini","n":1,"N":128,"max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
]


@pytest.mark.parametrize("body", _CASE_DUPS, ids=["MAX_TOKENS", "Max_Tokens", "N"])
def test_a_spending_body_naming_a_priced_key_in_two_cases_is_refused(make_gw, fake, body):
    """Round 7 refused a body repeating a key ("a parser that keeps the first value and one that keeps the last
    must not disagree"). keyplane supports Ollama as an upstream (docs/limits-and-billing.md "Local models", priced
    in one line), and Ollama's OpenAI layer decodes with Go's encoding/json, which matches `MAX_TOKENS` or
    `Max_Tokens` to the `max_tokens` field, last one winning. keyplane (msgspec, orjson, Python's json) reads only
    the exact `max_tokens`: reserved 5 output tokens, run for 100,000 (or 128 choices). request._unique compares
    keys exactly. Access policy already reads `model` case-insensitively (access/inspect._walk); the refusal should
    do the same for the keys admission reads (or for any two keys equal after casefold)."""
    srv = make_gw()
    _limit(srv, srv.project_id, 100)
    fake.requests.clear()
    r = _post(srv, srv.api_key, "/chat/completions", body)
    assert r.status_code == 400 and _code(r) == "duplicate_key", (r.status_code, r.text[:200])
    assert fake.model_requests() == []


def test_a_repeated_key_cannot_hide_another_projects_file_from_tenancy(make_gw, fake):
    """The ownership check (proxy/tenancy.py) reads the ids a body names with a last-value parser. On endpoints
    that are neither model nor spending endpoints the duplicate-key refusal does not run (proxy/handler.py calls
    request.one_reading only when `ep.model or ep.spending`), so `{"file_ids": [A's], "file_ids": [B's]}` is
    checked as B's own file and forwarded byte for byte: a first-value parser upstream (round 7's premise) builds
    project B's vector store from project A's file. The same body with A's file alone is 404 (round 6)."""
    srv = make_gw()
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    theirs = _client(srv, key_a).files.create(file=("notes.txt", b"A's private notes"), purpose="assistants")
    mine = _client(srv, key_b).files.create(file=("mine.txt", b"B's notes"), purpose="assistants")
    store = _client(srv, key_b).vector_stores.create(name="B's store")
    t, m = theirs.id.encode(), mine.id.encode()
    fake.requests.clear()
    for path, raw in (
        ("/vector_stores", b'{"name":"x","file_ids":["%s"],"file_ids":["%s"]}' % (t, m)),
        (f"/vector_stores/{store.id}/files", b'{"file_id":"%s","file_id":"%s"}' % (t, m)),
        (f"/vector_stores/{store.id}/file_batches", b'{"file_ids":["%s"],"file_ids":["%s"]}' % (t, m)),
        (
            "/threads",
            b'{"messages":[{"role":"user","content":"x","attachments":[{"file_id":"%s","file_id":"%s"}]}]}' % (t, m),
        ),
    ):
        r = _post(srv, key_b, path, raw)
        assert r.status_code in (400, 404), (path, r.status_code, r.text[:200])
    assert [x.path for x in fake.requests if t in bytes(x.body)] == []


# --- revocation while a request is in flight ---------------------------------------------------------------


def test_a_stream_is_cut_when_its_key_expires(make_gw, fake):
    """A key's stream is cut the moment it is revoked, suspended or deleted, or its project archived
    (proxy/handler.py _authority_ended, per chunk), and a realtime session ends when its key expires
    (proxy/realtime_policy.py reads `expires_at`). An HTTP stream does not: `_authority_ended` only looks for a
    changed snapshot entry with `revoked_at`/`suspended_at`, and expiry changes no entry. A key created with
    `expires_in_seconds=2` (docs/access-control.md "Key expiry") streamed a 6-second answer to its end; the next
    request was 401 "has expired". A stream held open (a long reasoning answer, a stalled upstream) outlives the
    key's expiry by as long as the upstream keeps writing."""
    srv = make_gw()
    k = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "short", "expires_in_seconds": 2})
    fake.default = Behaviour(chunk_delay=0.05, text=" ".join(["word"] * 120))

    async def go() -> bytes:
        out = b""
        body = {"model": "gpt-4o-mini", "stream": True, "messages": MSG, "max_tokens": 500}
        async with (
            httpx.AsyncClient(timeout=30) as h,
            h.stream(
                "POST", f"{srv.v1}/chat/completions", headers={"Authorization": f"Bearer {k['value']}"}, json=body
            ) as r,
        ):
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                out += chunk
        return out

    t0 = time.monotonic()
    out = asyncio.run(go())
    assert time.monotonic() - t0 < 5  # cut when the key expired (2 s), not at the end of the 6 s answer
    after = httpx.post(
        srv.v1 + "/chat/completions", headers={"Authorization": f"Bearer {k['value']}"}, json={"model": "gpt-4o-mini"}
    )
    assert after.status_code == 401  # refused on the next request
    assert b"has expired" in out and out.count(b"word") < 100, out[-200:]


# --- held: the admin API's roles -------------------------------------------------------------------------------


def test_held_a_project_role_reaches_no_other_projects_objects(make_gw, fake):
    """Held: a reader holding a project role with api.project.write in project A, calling under A's path with
    project B's key, service account, role or member, gets 404 on every one (keys, their spend and rate limits,
    model/tool/IP policies, suspend/resume/rotate, service accounts and their keys, project roles, members); under
    B's own path, 403. (Also tried: the Usage, Costs and audit log APIs with project_ids=B read B's rows, as the
    reader's api.organization.read allows by design.)"""
    srv = make_gw()
    own = httpx.Client(
        base_url=srv.v1 + "/organization", headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=10
    )
    a = own.post("/projects", json={"name": "A"}).json()["id"]
    b = own.post("/projects", json={"name": "B"}).json()["id"]
    kb = own.post(f"/projects/{b}/api_keys", json={"name": "kb"}).json()["id"]
    sab = own.post(f"/projects/{b}/service_accounts", json={"name": "sb"}).json()["id"]
    write = {"permissions": ["api.project.write", "api.project.read"]}
    rb = own.post(f"/projects/{b}/roles", json={"role_name": "rb", **write}).json()["id"]
    ra = own.post(f"/projects/{a}/roles", json={"role_name": "ra", **write}).json()["id"]
    u = own.post("/users", json={"email": "u@example.com", "role": "reader"}).json()
    v = own.post("/users", json={"email": "v@example.com", "role": "reader"}).json()
    make_member(srv, a, "u@example.com")
    make_member(srv, b, "v@example.com")
    assert own.post(f"/projects/{a}/users/{u['id']}/roles", json={"role_id": ra}).status_code == 200
    me = httpx.Client(base_url=srv.v1, headers={"Authorization": f"Bearer {_admin_key_of(srv, u['id'])}"}, timeout=10)
    p = f"/organization/projects/{a}"
    limit = {"threshold_amount": 100000, "currency": "USD", "interval": "month"}
    tries = [
        ("GET", f"{p}/api_keys/{kb}", None),
        ("POST", f"{p}/api_keys/{kb}", {"name": "x"}),
        ("DELETE", f"{p}/api_keys/{kb}", None),
        ("POST", f"{p}/api_keys/{kb}/suspend", {}),
        ("POST", f"{p}/api_keys/{kb}/rotate", {}),
        ("POST", f"{p}/api_keys/{kb}/spend_limit", limit),
        ("DELETE", f"{p}/api_keys/{kb}/spend_limit", None),
        ("POST", f"{p}/api_keys/{kb}/rate_limits/rl-gpt-4o-mini", {"max_requests_per_1_minute": 100000}),
        ("DELETE", f"{p}/api_keys/{kb}/model_permissions", None),
        ("POST", f"{p}/api_keys/{kb}/hosted_tool_permissions", {"web_search": {"enabled": True}}),
        ("DELETE", f"{p}/api_keys/{kb}/ip_allowlist", None),
        ("POST", f"{p}/service_accounts/{sab}", {"name": "x"}),
        ("POST", f"{p}/service_accounts/{sab}/api_keys", {"name": "x"}),
        ("DELETE", f"{p}/service_accounts/{sab}", None),
        ("POST", f"{p}/roles/{rb}", {"role_name": "zz"}),
        ("POST", f"/projects/{a}/roles/{rb}", {"role_name": "zz"}),
        ("POST", f"{p}/users/{u['id']}/roles", {"role_id": rb}),
        ("POST", f"{p}/users/{v['id']}", {"role": "owner"}),
        ("DELETE", f"{p}/users/{v['id']}", None),
    ]
    for m, path, body in tries:
        r = me.request(m, path, json=body) if body is not None else me.request(m, path)
        assert r.status_code == 404, (m, path, r.status_code, r.text[:200])
    for m, path, body in (
        ("POST", f"/organization/projects/{b}/api_keys", {"name": "n"}),
        ("POST", f"/projects/{b}/roles", {"role_name": "n", "permissions": ["api.project.write"]}),
        ("DELETE", f"/organization/projects/{b}/spend_limit", None),
    ):
        r = me.request(m, path, json=body) if body is not None else me.request(m, path)
        assert r.status_code == 403 and _code(r) == "insufficient_permissions", (m, path, r.text[:200])


def test_held_an_organization_writer_cannot_join_a_group_holding_project_authority(make_gw, fake):
    """Held: a user trusted with api.organization.write (custom role) but no project authority cannot add
    themselves to a group that holds a project role with api.project.write in project B (403), nor create a key in
    B; joining a group with only roles they hold is theirs to do."""
    srv = make_gw()
    own = httpx.Client(
        base_url=srv.v1 + "/organization", headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=10
    )
    b = own.post("/projects", json={"name": "B"}).json()["id"]
    rb = own.post(f"/projects/{b}/roles", json={"role_name": "rb", "permissions": ["api.project.write"]}).json()
    people = own.post(
        "/roles", json={"role_name": "people", "permissions": ["api.organization.read", "api.organization.write"]}
    ).json()
    u = own.post("/users", json={"email": "u@example.com", "role": "reader"}).json()
    assert own.post(f"/users/{u['id']}/roles", json={"role_id": people["id"]}).status_code == 200
    g = own.post("/groups", json={"name": "gB"}).json()
    assert own.post(f"/projects/{b}/groups", json={"group_id": g["id"], "role": "member"}).status_code == 200
    assert own.post(f"/projects/{b}/groups/{g['id']}/roles", json={"role_id": rb["id"]}).status_code == 200
    g2 = own.post("/groups", json={"name": "g2"}).json()
    me = httpx.Client(
        base_url=srv.v1 + "/organization",
        headers={"Authorization": f"Bearer {_admin_key_of(srv, u['id'])}"},
        timeout=10,
    )
    r = me.post(f"/groups/{g['id']}/users", json={"user_id": u["id"]})
    assert r.status_code == 403 and _code(r) == "insufficient_permissions", r.text
    assert me.post(f"/projects/{b}/api_keys", json={"name": "x"}).status_code == 403
    assert me.post(f"/groups/{g2['id']}/users", json={"user_id": u["id"]}).status_code == 200


def test_a_nested_key_named_in_two_cases_is_refused(make_gw, fake):
    """The case check holds in every object, not only at the top: `{"content": "hi", "CONTENT": <a long
    document>}` in a message was counted as "hi" (keyplane reads the exact key) and read as the document by a
    case-insensitive parser (Go's encoding/json: the last match wins), so the prompt reserved was not the one run."""
    srv = make_gw()
    fake.requests.clear()
    body = (
        b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi","CONTENT":"'
        + b"long " * 1000
        + b'"}]}'
    )
    r = _post(srv, srv.api_key, "/chat/completions", body)
    assert r.status_code == 400 and _code(r) == "duplicate_key", (r.status_code, r.text[:200])
    assert fake.model_requests() == []
