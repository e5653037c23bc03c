"""Smaller findings: tenancy skip on citation-typed dicts, shared fine-tuned model deletion, 500s from bodies."""

from __future__ import annotations

import httpx
import openai
import orjson

from tests.proxy.conftest import admin
from tests.proxy.test_integrity import raw_http

JSONL = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}\n'


def _project(srv):
    p = admin(srv, "POST", "/projects", {"name": f"p-{id(object())}"})
    k = admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})
    return k["value"]


def _post(srv, key, path, obj):
    return httpx.post(
        srv.v1 + path,
        content=orjson.dumps(obj),
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def test_a_citation_type_hides_a_foreign_file_id_from_the_tenancy_check(make_gw, fake):
    srv = make_gw()
    a, b = _project(srv), _project(srv)
    f = openai.OpenAI(base_url=srv.v1, api_key=a, max_retries=0).files.create(file=("a.jsonl", JSONL), purpose="batch")
    plain = _post(
        srv, b, "/batches", {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    assert plain.status_code == 404  # the check works on the plain body
    fake.requests.clear()
    # The same request with a top-level "type" naming a citation: tenancy.body_refs skips the whole dict.
    r = _post(
        srv,
        b,
        "/batches",
        {
            "type": "file_citation",
            "input_file_id": f.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    # Nested: a chat file part whose inner object carries a citation type.
    r2 = _post(
        srv,
        b,
        "/chat/completions",
        {
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"type": "file_citation", "file_id": f.id}}]}
            ],
        },
    )
    saw = [x.path for x in fake.model_requests() if f.id.encode() in x.body]
    print("batch:", r.status_code, r.text[:150], "| chat:", r2.status_code, "| upstream saw foreign id on", saw)
    assert saw == [], "project B sent project A's file id upstream"


def test_a_model_request_key_deletes_another_projects_fine_tuned_model(make_gw, fake):
    srv = make_gw()
    k = admin(
        srv,
        "POST",
        f"/projects/{srv.project_id}/api_keys",
        {"name": "model only", "permissions": ["api.model.request"]},
    )["value"]
    status, _, body = raw_http(
        srv.base_url, "DELETE", "/v1/models/ft:gpt-4o-mini:acme:team-b:AbC123", {"Authorization": f"Bearer {k}"}
    )
    seen = [(x.method, x.path) for x in fake.model_requests()]
    print(status, body[:200], seen)
    assert ("DELETE", "/v1/models/ft:gpt-4o-mini:acme:team-b:AbC123") not in seen


def test_messages_not_iterable_is_a_500(make_gw, fake):
    srv = make_gw()
    out = []
    for obj in (
        {"model": "gpt-4o-mini", "max_tokens": 5, "messages": 5},
        {"model": "gpt-4o-mini", "max_tokens": 5, "messages": True},
    ):
        r = _post(srv, srv.api_key, "/chat/completions", obj)
        out.append((r.status_code, r.text[:120]))
    print(out)
    assert all(s < 500 for s, _ in out), out


def test_deeply_nested_prompt_is_a_500(make_gw, fake):
    srv = make_gw()
    deep = b'{"model":"gpt-4o-mini","max_tokens":5,"prompt":' + b"[" * 600 + b'"a"' + b"]" * 600 + b"}"
    deep_chat = (
        b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":'
        + b"[" * 600
        + b'"a"'
        + b"]" * 600
        + b"}]}"
    )
    out = []
    for path, body in (("/completions", deep), ("/chat/completions", deep_chat)):
        r = httpx.post(
            srv.v1 + path,
            content=body,
            timeout=30,
            headers={"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"},
        )
        out.append((path, r.status_code, r.text[:120]))
    print(out)
    assert all(s < 500 for _, s, _ in out), out
