"""Projects are isolated at the provider (issue #12 items 7 and 8; docs/proxy.md "What is isolated").

Unit tests of proxy/tenancy.py and the router's per-project routing, then end to end: two projects
with their own keys, one shared provider key (the fake upstream), the official openai SDK.
"""

from __future__ import annotations

import asyncio
import random
import re

import httpx
import openai
import pytest

from keyplane import errors
from keyplane.config import Upstream
from keyplane.proxy.object_refs import body_refs, target
from keyplane.proxy.owners import OwnerStore
from keyplane.proxy.router import Breaker, Deployment, Router
from keyplane.store.models import ProviderObject
from keyplane.testing import FakeUpstream
from tests.proxy.conftest import admin, fake_config
from tests.support import RunningServer, postgres_database


def _dep(
    name: str,
    base_url: str = "http://u.example/v1",
    models: tuple[str, ...] = ("*",),
    weight: int = 1,
    projects: tuple[str, ...] = (),
) -> Deployment:
    up = Upstream(name=name, base_url=base_url, models=list(models), weight=weight, projects=list(projects))
    pattern = re.compile("|".join(f"(?:{re.escape(m).replace(chr(92) + '*', '.*')})" for m in models))
    return Deployment(up, "", Breaker(5, 30.0), pattern)


# --- paths and bodies --------------------------------------------------------------------------------


def test_target_names_the_object_a_path_is_about():
    t = target("/v1/files/file-abc/content")
    assert t is not None and (t.collection, t.noun, t.object_id) == ("/v1/files", "File", "file-abc")
    t = target("/v1/fine_tuning/jobs/ftjob-1/events")
    assert t is not None and (t.noun, t.object_id) == ("FineTuningJob", "ftjob-1")
    t = target("/v1/chat/completions/chatcmpl-1/messages")
    assert t is not None and t.object_id == "chatcmpl-1"
    t = target("/v1/batches")
    assert t is not None and t.object_id is None
    # Endpoints under a collection are not ids; paths outside every collection are not objects.
    assert target("/v1/responses/input_tokens") is None
    assert target("/v1/threads/runs") is None
    assert target("/v1/embeddings") is None
    assert target("/v1/filesystem") is None


def test_body_refs_finds_ids_wherever_they_grant_access():
    body = (
        b'{"model": "gpt-4o", "previous_response_id": "resp_1", "conversation": {"id": "conv_1"},'
        b' "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"},'
        b' {"type": "output_text", "text": "x",'
        b'  "annotations": [{"type": "file_citation", "file_id": "file-cited"}]}]}],'
        b' "tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}]}'
    )
    assert sorted(body_refs(body)) == sorted(
        [
            ("previous_response_id", "resp_1"),
            ("conversation", "conv_1"),
            ("file_id", "file-1"),
            ("vector_store_ids", "vs_1"),
            ("vector_store_ids", "vs_2"),
        ]
    )
    assert body_refs(b'{"input_file_id": "file-2", "endpoint": "/v1/chat/completions"}') == [
        ("input_file_id", "file-2")
    ]
    assert sorted(body_refs(b'{"training_file": "file-t", "validation_file": "file-v"}')) == [
        ("training_file", "file-t"),
        ("validation_file", "file-v"),
    ]
    assert body_refs(b'{"model": "gpt-4o", "messages": []}') == []  # the common case: no parse at all
    assert body_refs(b'--boundary\r\nContent-Disposition: form-data; name="file_id"') == []  # not JSON


def test_body_refs_cannot_be_hidden_from_the_check():
    # A "type" that names a citation hides nothing outside an annotations list (red-team finding).
    assert body_refs(b'{"type": "file_citation", "input_file_id": "file-a"}') == [("input_file_id", "file-a")]
    assert body_refs(b'{"type": "file", "file": {"type": "file_citation", "file_id": "file-b"}}') == [
        ("file_id", "file-b")
    ]
    # An escaped field name is the same field to every JSON parser.
    assert body_refs(b'{"previous_response\\u005fid": "resp_x"}') == [("previous_response_id", "resp_x")]
    # What keyplane cannot parse but a lenient upstream parser could is refused, not passed on unchecked.
    for body in (
        b'{"previous_response_id": "resp_x", "t": NaN}',
        '{"previous_response_id": "resp_x"}'.encode("utf-16-le"),
        '{"file_id": "file-x"}'.encode("utf-32"),
    ):
        with pytest.raises(errors.APIError) as e:
            body_refs(body)
        assert e.value.status == 400


def test_body_refs_finds_the_stored_items_an_input_references():
    def items(body: bytes) -> list[tuple[str, str]]:
        return sorted(body_refs(body))

    # An explicit reference, an item with an id and no type (or a null one), wherever the input list stands.
    assert items(
        b'{"model": "gpt-4o", "input": [{"type": "item_reference", "id": "msg_1"}, {"id": "msg_2"},'
        b' {"id": "msg_3", "type": null}, {"role": "user", "content": "hi"}]}'
    ) == [("input", "msg_1"), ("input", "msg_2"), ("input", "msg_3")]
    assert items(b'{"items": [{"id": "msg_4"}]}') == [("input", "msg_4")]  # POST /v1/conversations/{id}/items
    # A reasoning item is read by id unless its encrypted content comes with it.
    assert items(b'{"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}') == [("input", "rs_1")]
    assert items(b'{"input": [{"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "x"}]}') == []
    # An MCP approval names the approval request item it answers.
    assert items(b'{"input": [{"type": "mcp_approval_response", "approval_request_id": "mcpr_1"}]}') == [
        ("approval_request_id", "mcpr_1")
    ]
    # Items given whole (an answer replayed) and chat's tool call ids read nothing stored.
    assert items(b'{"input": [{"type": "message", "id": "msg_5", "role": "assistant", "content": []}]}') == []
    assert items(b'{"messages": [{"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]}]}') == []
    # Escaped, nested or in an unusual place: still found.
    assert items(b'{"input": [{"type": "item\\u005freference", "id": "msg_6"}]}') == [("input", "msg_6")]
    assert items(b'{"x": {"y": [{"type": "item_reference", "id": "msg_7"}]}}') == [("input", "msg_7")]


def test_body_refs_is_bounded():
    body = b'{"file_ids": [' + b",".join(b'"file-%d"' % i for i in range(1001)) + b"]}"
    with pytest.raises(errors.APIError) as e:
        body_refs(body)
    assert e.value.status == 400


# --- routing (item 8, and a project's own provider credential) -----------------------------------------


def test_paths_without_a_model_go_to_one_upstream_whatever_the_weights():
    deps = [_dep("demo", base_url="demo", models=("demo-*",)), _dep("a", weight=1), _dep("b", weight=100)]
    for seed in range(50):
        router = Router(deps, lambda: 0.0, random.Random(seed))
        assert [d.name for d in router.candidates(router.passthrough)] == ["a"]
        assert [d.name for d in router.passthrough_for("proj_x")] == ["a"]
    # The upstream that holds the object wins, when the project may use it.
    assert [d.name for d in router.passthrough_for("proj_x", pinned="b")] == ["b"]
    assert [d.name for d in router.passthrough_for("proj_x", pinned="gone")] == ["a"]


def test_a_project_with_its_own_upstream_uses_only_it():
    deps = [
        _dep("demo", base_url="demo", models=("demo-*",)),
        _dep("shared"),
        _dep("own-a", models=("gpt-*",), projects=("proj_a",)),
        _dep("own-b", projects=("Team B",)),
    ]
    router = Router(deps, lambda: 0.0)
    assert [d.name for d in router.serving("gpt-4o", "proj_a", "A")] == ["own-a"]
    assert [d.name for d in router.serving("gpt-4o", "proj_b", "Team B")] == ["own-b"]  # named by its name
    assert [d.name for d in router.serving("gpt-4o", "proj_c", "C")] == ["shared"]
    assert [d.name for d in router.serving("gpt-4o")] == ["shared"]
    assert [d.name for d in router.serving("demo-echo", "proj_a", "A")] == ["demo"]  # the demo holds no data
    assert [d.name for d in router.passthrough_for("proj_a", "A")] == ["own-a"]
    assert [d.name for d in router.passthrough_for("proj_c", "C")] == ["shared"]
    # An object recorded on an upstream the project may not use is never reached through it.
    assert [d.name for d in router.passthrough_for("proj_c", "C", pinned="own-a")] == ["shared"]


# --- end to end: two projects, one shared provider key --------------------------------------------

JSONL = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}\n'


def _project(srv: RunningServer, name: str | None = None) -> tuple[str, openai.OpenAI]:
    p = admin(srv, "POST", "/projects", {"name": name or f"p-{id(object())}"})
    k = admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})
    return p["id"], openai.OpenAI(base_url=srv.v1, api_key=k["value"], max_retries=0)


@pytest.fixture
def two(gw: RunningServer) -> tuple[openai.OpenAI, openai.OpenAI]:
    return _project(gw)[1], _project(gw)[1]


def _not_found(call: object, message: str) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as e:
        call()  # type: ignore[operator]
    assert message in e.value.message
    return e.value


def _upstream_saw(fake: FakeUpstream, oid: str) -> bool:
    return any(oid in r.path or oid.encode() in r.body for r in fake.requests)


def test_a_project_cannot_reach_another_projects_files(two, fake):
    a, b = two
    f = a.files.create(file=("a.jsonl", JSONL), purpose="batch")
    assert a.files.retrieve(f.id).id == f.id
    fake.reset()
    _not_found(lambda: b.files.retrieve(f.id), f"No such File object: {f.id}")
    _not_found(lambda: b.files.content(f.id), f"No such File object: {f.id}")
    _not_found(lambda: b.files.delete(f.id), f"No such File object: {f.id}")
    assert not _upstream_saw(fake, f.id)  # refused before any upstream call
    assert f.id not in [x.id for x in b.files.list()]
    assert f.id in [x.id for x in a.files.list()]
    mine = b.files.create(file=("b.jsonl", JSONL), purpose="batch")
    page = httpx.get(f"{b.base_url}files", headers={"Authorization": f"Bearer {b.api_key}"}).json()
    assert [x["id"] for x in page["data"]] == [mine.id]  # the fake lists every project's files
    assert (page["first_id"], page["last_id"], page["has_more"]) == (mine.id, mine.id, False)
    assert a.files.delete(f.id).deleted


def test_a_project_cannot_reach_another_projects_batches(two, fake):
    a, b = two
    f = a.files.create(file=("in.jsonl", JSONL), purpose="batch")
    e = _not_found(
        lambda: b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
        f"No such File object: {f.id}",
    )
    assert e.body["param"] == "input_file_id"  # type: ignore[index]
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    _not_found(lambda: b.batches.retrieve(batch.id), f"No such Batch object: {batch.id}")
    _not_found(lambda: b.batches.cancel(batch.id), f"No such Batch object: {batch.id}")
    assert batch.id not in [x.id for x in b.batches.list()]
    listed = a.batches.list()
    assert batch.id in [x.id for x in listed]
    # The output file the provider made for A's batch is A's: readable by A only.
    out = a.batches.retrieve(batch.id).output_file_id
    assert out and a.files.retrieve(out).id == out
    _not_found(lambda: b.files.retrieve(out), f"No such File object: {out}")


def test_a_project_cannot_reach_another_projects_stored_responses(gw, two, fake):
    a, b = two
    r = a.responses.create(model="gpt-4o-mini", input="hi")
    with a.responses.create(model="gpt-4o-mini", input="hi", stream=True) as stream:
        streamed = next(ev.response.id for ev in stream if ev.type == "response.created")
    for rid in (r.id, streamed):
        got = httpx.get(f"{gw.v1}/responses/{rid}", headers={"Authorization": f"Bearer {a.api_key}"})
        assert got.status_code == 200 and b"response.created" in got.content  # the fake streams it back
        _not_found(lambda rid=rid: b.responses.retrieve(rid), f"No such Response object: {rid}")
        _not_found(lambda rid=rid: b.responses.delete(rid), f"No such Response object: {rid}")
        e = _not_found(
            lambda rid=rid: b.responses.create(model="gpt-4o-mini", input="more", previous_response_id=rid), rid
        )
        assert e.body["param"] == "previous_response_id"  # type: ignore[index]
    assert a.responses.create(model="gpt-4o-mini", input="more", previous_response_id=r.id).id
    # store=false creates nothing to own: no one may read it back through keyplane.
    gone = a.responses.create(model="gpt-4o-mini", input="hi", store=False)
    _not_found(lambda: a.responses.retrieve(gone.id), gone.id)


def _reference(client: openai.OpenAI, item_id: str, store: bool = True) -> str:
    return client.responses.create(
        model="gpt-4o-mini",
        input=[{"type": "item_reference", "id": item_id}],
        store=store,  # type: ignore[list-item]
    ).id


def test_a_project_cannot_reference_another_projects_stored_items(gw, two, fake):
    a, b = two
    r = a.responses.create(model="gpt-4o-mini", input="hi")
    msg = r.output[0].id
    with a.responses.create(model="gpt-4o-mini", input="hi", stream=True) as stream:
        streamed = next(ev.response for ev in stream if ev.type == "response.completed")
    smsg = streamed.output[0].id
    listed = a.responses.input_items.list(r.id).data[0].id  # a response's input items, shown to its project
    for item in (msg, smsg, listed):
        assert _reference(a, item)  # the project's own items: referenced freely
        fake.reset()
        e = _not_found(lambda item=item: _reference(b, item), f"No such Item object: {item}")
        assert e.body["param"] == "input"  # type: ignore[index]
        assert not _upstream_saw(fake, item)  # refused before any upstream call
        # The untyped form and a bare reasoning item are references too.
        for shape in ({"id": item}, {"type": "reasoning", "id": item, "summary": []}):
            _not_found(lambda shape=shape: b.responses.create(model="gpt-4o-mini", input=[shape]), item)
    # An item id keyplane never saw shown (made elsewhere, or of a response not stored) is nobody's.
    _not_found(lambda: _reference(a, "msg_made_elsewhere"), "No such Item object: msg_made_elsewhere")
    gone = a.responses.create(model="gpt-4o-mini", input="hi", store=False)
    _not_found(lambda: _reference(a, gone.output[0].id), gone.output[0].id)


def test_stored_chat_completions_belong_to_their_project(two, fake):
    a, b = two
    c = a.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], store=True)
    fake.reset()
    _not_found(lambda: b.chat.completions.retrieve(c.id), f"No such ChatCompletion object: {c.id}")
    assert not _upstream_saw(fake, c.id)
    with pytest.raises(openai.NotFoundError) as e:  # A's request reaches the provider (the fake has no such API)
        a.chat.completions.retrieve(c.id)
    assert "Invalid URL" in e.value.message and _upstream_saw(fake, c.id)
    # streamed: owned from its first chunk
    stream = a.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], store=True, stream=True
    )
    sid = next(iter(stream)).id
    stream.close()
    _not_found(lambda: b.chat.completions.retrieve(sid), f"No such ChatCompletion object: {sid}")
    with pytest.raises(openai.NotFoundError) as e:
        a.chat.completions.retrieve(sid)
    assert "Invalid URL" in e.value.message
    # not stored: nobody owns it
    plain = a.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    _not_found(lambda: a.chat.completions.retrieve(plain.id), f"No such ChatCompletion object: {plain.id}")


def test_ids_not_created_through_keyplane_are_refused(gw, fake):
    _, a = _project(gw)
    r = httpx.get(gw.v1 + "/files/file-made-elsewhere", headers={"Authorization": f"Bearer {a.api_key}"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "No such File object: file-made-elsewhere",
            "type": "invalid_request_error",
            "param": None,
            "code": "object_not_found",
        }
    }


def test_object_paths_go_to_one_upstream_never_by_weight(make_gateway, fake, fake2):
    other = fake2
    srv = make_gateway(fake_config(fake, other, weight=1))
    _, a = _project(srv)
    fake.reset()
    ids = [a.files.create(file=("x.jsonl", JSONL), purpose="batch").id for _ in range(12)]
    assert not other.requests  # all on the first upstream in config order
    assert len([r for r in fake.requests if r.path == "/v1/files"]) == 12
    for i in ids:  # and read back from it
        assert a.files.retrieve(i).id == i
    assert not other.requests


def test_a_project_can_have_its_own_provider_credential(make_gateway, fake, fake2, monkeypatch):
    own = fake2
    monkeypatch.setenv("KP_TEAM_A_KEY", "sk-team-a-0123456789")
    extra = (
        f'[[upstreams]]\nname = "team-a"\nbase_url = "{own.base_url}"\napi_key_env = "KP_TEAM_A_KEY"\n'
        'models = ["gpt-*"]\nprojects = ["team-a"]\nretry_backoff = 0.01\n'
    )
    srv = make_gateway(fake_config(fake, extra=extra))
    _, a = _project(srv, "team-a")
    _, b = _project(srv)
    fake.reset()
    a.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    fa = a.files.create(file=("x.jsonl", JSONL), purpose="batch")
    assert not fake.requests
    assert [r.headers["authorization"] for r in own.requests] == ["Bearer sk-team-a-0123456789"] * 2
    own.reset()
    b.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    b.files.create(file=("x.jsonl", JSONL), purpose="batch")
    assert not own.requests and len(fake.requests) == 2
    _not_found(lambda: b.files.retrieve(fa.id), fa.id)


@pytest.mark.postgres
def test_ownership_is_shared_by_a_fleet(fake, gateways):
    with postgres_database() as url:
        n1 = gateways.start(fake_config(fake), store=url)
        n2 = gateways.start(fake_config(fake), store=url)  # n1's org and secret key: a fleet
        try:
            _, a1 = _project(n1)
            _, b1 = _project(n1)
            a2 = openai.OpenAI(base_url=n2.v1, api_key=a1.api_key, max_retries=0)
            b2 = openai.OpenAI(base_url=n2.v1, api_key=b1.api_key, max_retries=0)
            f = a1.files.create(file=("x.jsonl", JSONL), purpose="batch")
            r = a1.responses.create(model="gpt-4o-mini", input="hi")
            # The other instance knows at once: the create was answered after its owner was committed.
            assert a2.files.retrieve(f.id).id == f.id
            assert (
                httpx.get(f"{n2.v1}/responses/{r.id}", headers={"Authorization": f"Bearer {a2.api_key}"}).status_code
                == 200
            )
            _not_found(lambda: b2.files.retrieve(f.id), f.id)
            _not_found(lambda: b2.responses.retrieve(r.id), r.id)
        finally:
            gateways.stop_all()  # before the database is dropped


def test_a_project_whose_own_credential_is_missing_never_falls_back_to_the_shared_key(make_gateway, fake):
    extra = (
        '[[upstreams]]\nname = "team-x"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "KP_UNSET_KEY_X"\n'
        'projects = ["team-x"]\n'
    )
    srv = make_gateway(fake_config(fake, extra=extra))
    _, x = _project(srv, "team-x")
    fake.reset()
    with pytest.raises(openai.APIStatusError):
        x.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError):
        x.files.list()
    assert not fake.requests


def test_owners_are_committed_before_record_returns_and_read_back_on_a_miss(make_gateway, fake):
    srv = make_gateway(fake_config(fake))
    rt = srv.app.runtime
    store = rt.features.proxy.tenancy.store

    async def go() -> dict:
        rows = [
            ProviderObject(id=f"file-t{i}", project_id=f"proj_{i % 2}", object="file", upstream="fake", created_at=0)
            for i in range(100)
        ]
        await asyncio.gather(*(store.record([r]) for r in rows))  # concurrent creates: group commits
        await store.record(
            [ProviderObject(id="file-t0", project_id="proj_x", object="file", upstream="x", created_at=0)]
        )  # an id keeps its first owner
        fresh = OwnerStore(rt)  # another instance: an empty cache reads SQL
        return await fresh.owners([f"file-t{i}" for i in range(100)] + ["file-unknown"])

    owners = srv.call(go())
    assert len(owners) == 100 and "file-unknown" not in owners
    assert owners["file-t0"].project_id == "proj_0" and owners["file-t7"].project_id == "proj_1"
    assert {o.upstream for o in owners.values()} == {"fake"}
