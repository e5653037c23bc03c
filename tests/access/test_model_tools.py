"""Model and hosted tool permissions: set with the official SDK's admin client, enforced on /v1 before the
upstream is called (the fake upstream sees nothing), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import new_key

MSG = [{"role": "user", "content": "hi"}]


def _refused(call, code: str) -> openai.PermissionDeniedError:
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.code == code, e.value.body
    return e.value


def test_model_permissions(gw, admin, client, fake: FakeUpstream):
    mp = admin.admin.organization.projects.model_permissions
    got = mp.retrieve(gw.project_id)
    assert got.mode == "deny_list" and got.api_model_ids == []

    pol = mp.update(gw.project_id, mode="allow_list", model_ids=["gpt-4o-mini"])
    assert pol.mode == "allow_list" and pol.api_model_ids == ["gpt-4o-mini"]
    assert pol.object == "project.model_permissions"
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    assert client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MSG).choices  # a snapshot of it
    fake.reset()
    e = _refused(lambda: client.chat.completions.create(model="gpt-4o", messages=MSG), "model_not_permitted")
    assert gw.project_id in e.message and "allow list" in e.message
    _refused(lambda: client.responses.create(model="gpt-4.1", input="hi"), "model_not_permitted")
    _refused(lambda: client.embeddings.create(model="text-embedding-3-large", input="hi"), "model_not_permitted")
    # A second model named deeper in the body (e.g. an eval run's data source) is checked too.
    _refused(
        lambda: client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, extra_body={"metadata": {"model": "gpt-4o"}}
        ),
        "model_not_permitted",
    )
    assert fake.model_requests() == []

    mp.update(gw.project_id, mode="deny_list", model_ids=["gpt-4o"])
    for m in ("gpt-4o", "GPT-4o", "gpt-4o-2024-08-06", "ft:gpt-4o:acme::abc123"):
        _refused(lambda m=m: client.chat.completions.create(model=m, messages=MSG), "model_not_permitted")
    # Duplicated keys: a parser keeping the first value and one keeping the last must not disagree.
    raw = b'{"model": "gpt-4o", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    r = httpx.post(
        gw.v1 + "/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 403) and r.json()["error"]["code"] in ("duplicate_key", "model_not_permitted")
    # A batch's requests are read from its input file (uploaded through keyplane) and held to the policy line by
    # line; a file keyplane did not read as a batch file cannot be checked, and is refused while a policy is set.
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": MSG},
    }
    denied = client.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    unread = client.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="fine-tune")
    fake.reset()
    for f, code in ((denied, "model_not_permitted"), (unread, "batch_not_permitted")):
        _refused(
            lambda f=f: client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
            code,
        )
    assert fake.model_requests() == []
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices

    deleted = mp.delete(gw.project_id)
    assert deleted.deleted and deleted.object == "project.model_permissions.deleted"
    assert client.chat.completions.create(model="gpt-4o", messages=MSG).choices

    r = httpx.get(gw.v1 + "/organization/audit_logs", headers={"Authorization": f"Bearer {gw.admin_key}"})
    types = [e["type"] for e in r.json()["data"]]
    assert "model_permissions.updated" in types and "model_permissions.deleted" in types


def test_key_model_permissions(gw, admin, client, fake: FakeUpstream):
    other = new_key(gw)
    kid = other["id"]
    r = httpx.post(
        f"{gw.v1}/organization/projects/{gw.project_id}/api_keys/{kid}/model_permissions",
        json={"mode": "allow_list", "model_ids": ["gpt-4o-mini"]},
        headers={"Authorization": f"Bearer {gw.admin_key}"},
    )
    assert r.status_code == 200, r.text
    narrowed = openai.OpenAI(base_url=gw.v1, api_key=other["value"], max_retries=0)
    fake.reset()
    e = _refused(lambda: narrowed.chat.completions.create(model="gpt-4o", messages=MSG), "model_not_permitted")
    assert kid in e.message
    assert fake.model_requests() == []
    assert client.chat.completions.create(model="gpt-4o", messages=MSG).choices  # the project's other keys
    # A rotated key keeps its own policy.
    r = httpx.post(
        f"{gw.v1}/organization/projects/{gw.project_id}/api_keys/{kid}/rotate",
        json={},
        headers={"Authorization": f"Bearer {gw.admin_key}"},
    )
    assert r.status_code == 200, r.text
    rotated = openai.OpenAI(base_url=gw.v1, api_key=r.json()["value"], max_retries=0)
    _refused(lambda: rotated.chat.completions.create(model="gpt-4o", messages=MSG), "model_not_permitted")
    assert rotated.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    r = httpx.post(
        f"{gw.v1}/organization/projects/{gw.project_id}/api_keys/key_nope/model_permissions",
        json={"mode": "allow_list", "model_ids": []},
        headers={"Authorization": f"Bearer {gw.admin_key}"},
    )
    assert r.status_code == 404


TOOL_ATTACKS = [
    ("web_search", {"tools": [{"type": "web_search_preview"}]}),
    ("web_search", {"tools": [{"type": "web_search_preview_2025_03_11"}]}),
    (
        "web_search",
        {"tools": [{"type": "function", "name": "f", "parameters": {}}], "tool_choice": {"type": "web_search"}},
    ),
    ("web_search", {"tools": json.dumps([{"type": "web_search"}])}),  # escaped JSON in a string
    ("mcp", {"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://example.com"}]}),
    ("mcp", {"input": [{"type": "mcp_approval_response", "approve": True, "approval_request_id": "mcpr_1"}]}),
    ("image_generation", {"tools": [{"type": "image_generation"}]}),
    ("code_interpreter", {"tools": [{"type": "CODE_INTERPRETER", "container": {"type": "auto"}}]}),
    ("file_search", {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
]


def test_hosted_tool_permissions(gw, admin, client, fake: FakeUpstream):
    htp = admin.admin.organization.projects.hosted_tool_permissions
    assert htp.retrieve(gw.project_id).web_search.enabled
    off = {"enabled": False}
    got = htp.update(
        gw.project_id, web_search=off, mcp=off, image_generation=off, code_interpreter=off, file_search=off
    )
    assert not got.web_search.enabled and not got.mcp.enabled
    fake.reset()
    for tool, extra in TOOL_ATTACKS:
        body = {"model": "gpt-4o-mini", "input": "hi", **extra}
        e = _refused(lambda body=body: client.responses.create(**body), "tool_not_permitted")
        assert f"`{tool}`" in e.message, (tool, e.message)
    # Chat: web_search_options, and the models that always search.
    _refused(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MSG, web_search_options={}),
        "tool_not_permitted",
    )
    _refused(lambda: client.chat.completions.create(model="gpt-4o-search-preview", messages=MSG), "tool_not_permitted")
    # Unicode escapes and a duplicated "type" key hiding the tool from a last-value parser.
    raw = b'{"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "web\\u005fsearch"}]}'
    hdr = {"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json"}
    r = httpx.post(gw.v1 + "/responses", content=raw, headers=hdr)
    assert r.status_code == 403 and r.json()["error"]["code"] == "tool_not_permitted"
    raw = b'{"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "mcp", "type": "function"}]}'
    r = httpx.post(gw.v1 + "/responses", content=raw, headers=hdr)
    assert r.status_code in (400, 403)
    r = httpx.post(
        gw.v1 + "/responses",
        content=b'{"model": "gpt-4o-mini", "tools": [{"type": "mcp"}]}',
        headers={**hdr, "Content-Type": "text/plain"},
    )
    assert r.status_code == 403
    assert fake.model_requests() == []

    # Enabling one tool lets it through; a function tool was never in question.
    htp.update(gw.project_id, web_search={"enabled": True})
    assert client.responses.create(model="gpt-4o-mini", input="hi", tools=[{"type": "web_search_preview"}])
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    assert len(fake.model_requests()) == 2


def test_key_tool_permissions_and_stored_prompts(gw, admin, client, fake: FakeUpstream):
    other = new_key(gw)
    url = f"{gw.v1}/organization/projects/{gw.project_id}/api_keys/{other['id']}/hosted_tool_permissions"
    h = {"Authorization": f"Bearer {gw.admin_key}"}
    r = httpx.post(url, json={"code_interpreter": {"enabled": False}}, headers=h)
    assert r.status_code == 200 and r.json()["code_interpreter"] == {"enabled": False}
    assert r.json()["web_search"] == {"enabled": True}
    assert httpx.post(url, json={"shell": {"enabled": False}}, headers=h).status_code == 400
    assert httpx.post(url, json={"mcp": {"enabled": "no"}}, headers=h).status_code == 400
    narrowed = openai.OpenAI(base_url=gw.v1, api_key=other["value"], max_retries=0)
    fake.reset()
    e = _refused(
        lambda: narrowed.responses.create(
            model="gpt-4o-mini", input="hi", tools=[{"type": "code_interpreter", "container": {"type": "auto"}}]
        ),
        "tool_not_permitted",
    )
    assert other["id"] in e.message
    # Assistants' tool_resources, and a stored prompt whose tools keyplane cannot see.
    _refused(
        lambda: narrowed.post(
            "/assistants",
            cast_to=object,
            body={"model": "gpt-4o-mini", "tool_resources": {"code_interpreter": {"file_ids": []}}},
        ),
        "tool_not_permitted",
    )
    # (The stored prompt is the project's: made in the provider's dashboard, it is assigned by the operator.)
    admin_post = {"Authorization": f"Bearer {gw.admin_key}"}
    r = httpx.post(
        f"{gw.v1}/organization/provider_objects",
        json={"id": "pmpt_123", "project_id": gw.project_id},
        headers=admin_post,
    )
    assert r.status_code == 200, r.text
    _refused(lambda: narrowed.responses.create(model="gpt-4o-mini", prompt={"id": "pmpt_123"}), "tool_not_permitted")
    assert fake.model_requests() == []
    assert client.responses.create(model="gpt-4o-mini", input="hi", prompt={"id": "pmpt_123"})  # no policy there
    bad = httpx.post(
        f"{gw.v1}/organization/projects/{gw.project_id}/model_permissions",
        json={"mode": "block", "model_ids": []},
        headers=h,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "mode"
