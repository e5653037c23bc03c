"""Ownership of what a body names below its top level (docs/proxy.md "What is isolated between projects"):
stored prompts (``prompt: {"id": "pmpt_..."}``), owned only once an operator assigns them to a project, and
fine-tuned models (``ft:...``) named anywhere in a JSON body (an eval run's data source, graders, a reinforcement
fine-tuning job's grader, batch lines), held to the rule of a top-level fine-tuned model.

Unit tests of the body walk (proxy/object_refs.py) and of the assignment (keyplane.control.provider_objects),
then end to end: two projects with their own keys on one shared provider key (the fake upstream), the official
openai SDK, the admin API and the `keyplane objects assign` command.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import orjson
import pytest
from typer.testing import CliRunner

from keyplane import errors
from keyplane.cli import app as cli_app
from keyplane.proxy.object_refs import MODEL_FIELD, PROMPT_FIELD, batch_file_refs, body_refs
from keyplane.proxy.owners import Owner, foreign_model
from keyplane.testing import FakeUpstream
from tests.proxy.conftest import admin, fake_config
from tests.support import RunningServer

FT_A = "ft:gpt-4o-mini-2024-07-18:org-a:team-a:AbCd1234"
CKPT_A = FT_A + ":ckpt-step-10"
PROMPT = "pmpt_68ac0123456789abcdef0123456789ab"
MSG = [{"role": "user", "content": "hi"}]


def _models(refs: list[tuple[str, str]]) -> list[str]:
    return sorted(i for k, i in refs if k == MODEL_FIELD)


# --- the body walk ------------------------------------------------------------------------------------------


def test_a_stored_prompt_is_named_wherever_it_stands():
    assert body_refs(orjson.dumps({"model": "gpt-4o", "prompt": {"id": PROMPT, "version": "3"}})) == [
        (PROMPT_FIELD, PROMPT)
    ]
    # A Realtime-like or nested shape: still a stored prompt.
    assert (PROMPT_FIELD, "pmpt_2") in body_refs(orjson.dumps({"session": {"prompt": {"id": "pmpt_2"}}}))
    # Escaped spellings read as any JSON parser reads them.
    assert body_refs(b'{"pro\\u006dpt": {"id": "pmpt_3"}}') == [(PROMPT_FIELD, "pmpt_3")]
    # A prompt that is text (completions, images, audio) names no object; an id that is not a string neither.
    assert body_refs(orjson.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": "say id"})) == []
    assert body_refs(orjson.dumps({"prompt": ["a", "b"], "id": "x"})) == []
    assert body_refs(orjson.dumps({"prompt": {"id": 3}})) == []


def test_every_fine_tuned_model_is_named_wherever_it_stands():
    run = {
        "name": "r",
        "data_source": {
            "type": "completions",
            "model": FT_A,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            "source": {"type": "file_content", "content": [{"item": {"q": "x"}}]},
        },
    }
    assert _models(body_refs(orjson.dumps(run))) == [FT_A]
    ev = {
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [
            {"type": "score_model", "name": "s", "model": "ft:gpt-4o:o:s:1", "input": []},
            {"type": "label_model", "name": "l", "model": "gpt-4o", "input": [], "labels": [], "passing_labels": []},
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a",
                "graders": {"a": {"type": "score_model", "name": "a", "model": CKPT_A, "input": []}},
            },
        ],
    }
    assert _models(body_refs(orjson.dumps(ev))) == sorted(["ft:gpt-4o:o:s:1", CKPT_A])
    job = {
        "model": "gpt-4o-mini",
        "training_file": "file-t",
        "method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "score_model", "model": FT_A}}},
    }
    assert sorted(body_refs(orjson.dumps(job))) == sorted([("training_file", "file-t"), (MODEL_FIELD, FT_A)])
    # The top-level model, a tool's model, a list of models, an escaped spelling: all named.
    assert _models(body_refs(orjson.dumps({"model": FT_A, "input": "x"}))) == [FT_A]
    assert _models(body_refs(orjson.dumps({"tools": [{"type": "image_generation", "model": "ft:img:o:s:2"}]}))) == [
        "ft:img:o:s:2"
    ]
    assert _models(body_refs(orjson.dumps({"models": ["gpt-4o", FT_A]}))) == [FT_A]
    assert _models(body_refs(b'{"data_source": {"model": "\\u0066t:gpt-4o:o:s:9"}}')) == ["ft:gpt-4o:o:s:9"]
    # Base models and text that merely mentions one are not fine-tuned models.
    assert body_refs(orjson.dumps({"model": "gpt-4o", "input": "about ft:gpt-4o:o:s:1"})) == []


def test_a_batch_lines_prompts_and_fine_tuned_models_are_named():
    lines = [
        {
            "custom_id": "1",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o", "prompt": {"id": PROMPT}},
        },
        {
            "custom_id": "2",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": FT_A, "messages": MSG},
        },
        {"custom_id": "3", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}},
    ]
    content = b"\n".join(orjson.dumps(x) for x in lines)
    assert sorted(batch_file_refs(content)) == [(1, PROMPT_FIELD, PROMPT), (2, MODEL_FIELD, FT_A)]


def test_foreign_model_is_the_rule_of_a_top_level_fine_tuned_model():
    owners = {FT_A: Owner("proj_a", "fake", "model")}
    assert foreign_model(owners, FT_A, "proj_b")
    assert foreign_model(owners, CKPT_A, "proj_b")  # a checkpoint belongs to the model its job made
    assert not foreign_model(owners, FT_A, "proj_a") and not foreign_model(owners, CKPT_A, "proj_a")
    assert not foreign_model(owners, "ft:gpt-4o:elsewhere:x:1", "proj_b")  # made outside keyplane: no owner


def test_a_body_naming_too_many_fine_tuned_models_is_refused():
    with pytest.raises(errors.APIError) as e:
        body_refs(orjson.dumps({"models": [f"ft:m:o:s:{i}" for i in range(1001)]}))
    assert e.value.code == "too_many_ids"
    # A user's text that starts with `ft:` is no model (round 11): neither counted nor looked up.
    assert body_refs(orjson.dumps({"input": [f"ft:m:o:s:{i}" for i in range(1001)], "model": "gpt-4o"})) == []


# --- end to end ---------------------------------------------------------------------------------------------


def _project(srv: RunningServer) -> tuple[str, openai.OpenAI]:
    p = admin(srv, "POST", "/projects", {"name": f"p-{time.monotonic_ns()}"})
    key = admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})["value"]
    return p["id"], openai.OpenAI(base_url=srv.v1, api_key=key, max_retries=0)


def _assign(srv: RunningServer, body: dict) -> httpx.Response:
    return httpx.post(
        srv.v1 + "/organization/provider_objects", json=body, headers={"Authorization": f"Bearer {srv.admin_key}"}
    )


@pytest.fixture
def srv(make_gateway, fake: FakeUpstream) -> RunningServer:
    return make_gateway(fake_config(fake))


def test_a_stored_prompt_is_refused_until_assigned_and_then_only_to_its_project(srv, fake: FakeUpstream):
    pa, a = _project(srv)
    pb, b = _project(srv)
    fake.requests.clear()
    with pytest.raises(openai.NotFoundError) as e:  # made in the dashboard: owned by no project
        a.responses.create(model="gpt-4o-mini", input="hi", prompt={"id": PROMPT, "version": "2"})
    assert e.value.code == "object_not_found" and e.value.body["param"] == "prompt", e.value.body  # type: ignore[index]
    assert PROMPT in e.value.message
    assert fake.model_requests() == []

    r = _assign(srv, {"id": PROMPT, "project_id": pa, "upstream": "fake"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": PROMPT,
        "object": "organization.provider_object",
        "kind": "prompt",
        "project_id": pa,
        "upstream": "fake",
        "created_at": r.json()["created_at"],
    }
    # At once on this instance (the miss remembered a moment ago is forgotten).
    assert a.responses.create(model="gpt-4o-mini", input="hi", prompt={"id": PROMPT}).id
    assert orjson.loads(fake.model_requests()[-1].body)["prompt"] == {"id": PROMPT}
    fake.requests.clear()
    with pytest.raises(openai.NotFoundError) as e:
        b.responses.create(model="gpt-4o-mini", input="hi", prompt={"id": PROMPT})
    assert e.value.code == "object_not_found"
    assert fake.model_requests() == []

    # The same project again: answered as it is; another project: the owner stays.
    again = _assign(srv, {"id": PROMPT, "project_id": pa})
    assert again.status_code == 200 and again.json()["upstream"] == "fake"
    taken = _assign(srv, {"id": PROMPT, "project_id": pb})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "object_already_owned", taken.text
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="gpt-4o-mini", input="hi", prompt={"id": PROMPT})

    # Audited once, as a control-plane write.
    logs = admin(srv, "GET", "/audit_logs?event_types[]=provider_object.assigned")["data"]
    assert [(x["type"], x["project"]["id"]) for x in logs] == [("provider_object.assigned", pa)]


def test_the_assignment_is_validated_and_an_organization_write(srv):
    pa, _ = _project(srv)
    cases = [
        ({"id": "pmpt 1", "project_id": pa}, 400, "id"),
        ({"id": "", "project_id": pa}, 400, "id"),
        ({"id": "x" * 1025, "project_id": pa}, 400, "id"),  # past PROVIDER_ID_LIMIT (129 is owned by its digest)
        ({"id": "pmpt_ok", "project_id": "proj_nope"}, 404, "project_id"),
        ({"id": "pmpt_ok", "project_id": pa, "upstream": "elsewhere"}, 400, "upstream"),
        ({"id": "pmpt_ok", "project_id": pa, "kind": "Not A Kind"}, 400, "kind"),
    ]
    for body, status, param in cases:
        r = _assign(srv, body)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    admin(srv, "POST", f"/projects/{pa}/archive")
    r = _assign(srv, {"id": "pmpt_ok", "project_id": pa})
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_archived"
    # A project key is no admin key.
    _, client = _project(srv)
    r = httpx.post(
        srv.v1 + "/organization/provider_objects",
        json={"id": "pmpt_ok", "project_id": pa},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert r.status_code == 401
    # A reader admin key may not write it.
    reader = admin(srv, "POST", "/admin_api_keys", {"name": "ro", "role": "reader"})
    r = httpx.post(
        srv.v1 + "/organization/provider_objects",
        json={"id": "pmpt_ok", "project_id": pa},
        headers={"Authorization": f"Bearer {reader['value']}"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions", r.text


def test_an_assigned_file_may_not_run_as_a_batch_input(srv):
    pa, _ = _project(srv)
    r = _assign(srv, {"id": "file-made-elsewhere", "project_id": pa})
    assert r.status_code == 200 and r.json()["kind"] == "file.unchecked", r.text


def test_a_batch_line_naming_an_unassigned_stored_prompt_does_not_run(srv, fake: FakeUpstream):
    pa, a = _project(srv)
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "prompt": {"id": PROMPT}, "input": "go", "max_output_tokens": 5},
    }
    f = a.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    before = len(fake.objects.batches)
    with pytest.raises(openai.PermissionDeniedError) as e:
        a.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    assert e.value.code == "batch_input_unchecked", e.value.body
    assert len(fake.objects.batches) == before
    # Assigned to the project, the same line is read as the project's own.
    assert _assign(srv, {"id": PROMPT, "project_id": pa}).status_code == 200
    f = a.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    try:
        a.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    except openai.APIStatusError as err:  # billing may refuse it (a stored prompt's tools): not ownership
        assert err.code not in ("batch_input_unchecked", "object_not_found"), err.body


def _eval_run(model: str) -> dict:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "source": {"type": "file_content", "content": [{"item": {"q": "repeat your training data"}}]},
    }


@pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")
def test_another_projects_fine_tuned_model_is_refused_wherever_a_body_names_it(srv, fake: FakeUpstream):
    pa, a = _project(srv)
    _, b = _project(srv)
    r = _assign(srv, {"id": FT_A, "project_id": pa})  # as if A's fine-tuning job had made it
    assert r.status_code == 200 and r.json()["kind"] == "model", r.text
    ev_a = a.evals.create(
        name="a", data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=[]
    )
    ev_b = b.evals.create(
        name="b", data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=[]
    )
    training = b.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    grader = {"type": "score_model", "name": "g", "model": FT_A, "input": [{"role": "user", "content": "x"}]}

    def refused(call) -> None:  # type: ignore[no-untyped-def]
        fake.requests.clear()
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.code == "model_not_found" and FT_A in e.value.message, e.value.body
        assert fake.model_requests() == [], [x.path for x in fake.model_requests()]

    refused(lambda: b.chat.completions.create(model=FT_A, messages=MSG, max_tokens=5))  # the top level (control)
    refused(lambda: b.evals.runs.create(ev_b.id, name="r", data_source=_eval_run(FT_A)))  # type: ignore[arg-type]
    refused(lambda: b.evals.runs.create(ev_b.id, name="r", data_source=_eval_run(CKPT_A)))  # type: ignore[arg-type]
    refused(
        lambda: b.evals.create(
            name="g",
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[grader],  # type: ignore[list-item]
        )
    )
    multi = {"type": "multi", "name": "m", "calculate_output": "g", "graders": {"g": grader}}
    refused(
        lambda: b.evals.create(
            name="m",
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[multi],  # type: ignore[list-item]
        )
    )
    refused(
        lambda: b.fine_tuning.jobs.create(
            model="o4-mini",
            training_file=training.id,
            method={"type": "reinforcement", "reinforcement": {"grader": grader}},  # type: ignore[typeddict-item]
        )
    )
    refused(
        lambda: b.post(
            "/responses",
            cast_to=object,
            body={"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "image_generation", "model": FT_A}]},
        )
    )
    # The project that made it samples it; a fine-tuned model nobody made through keyplane stays usable.
    run = a.evals.runs.create(ev_a.id, name="r", data_source=_eval_run(FT_A))  # type: ignore[arg-type]
    assert run.id and run.model == FT_A
    run = b.evals.runs.create(ev_b.id, name="r", data_source=_eval_run("ft:gpt-4o-mini:elsewhere:x:1"))  # type: ignore[arg-type]
    assert run.id


def test_a_batch_line_naming_another_projects_fine_tuned_model_deep_down_does_not_run(srv, fake: FakeUpstream):
    pa, _ = _project(srv)
    _, b = _project(srv)
    assert _assign(srv, {"id": FT_A, "project_id": pa}).status_code == 200
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "input": "go",
            "max_output_tokens": 5,
            "tools": [{"type": "image_generation", "model": FT_A}],
        },
    }
    f = b.files.create(file=("in.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    before = len(fake.objects.batches)
    with pytest.raises(openai.PermissionDeniedError) as e:
        b.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    assert e.value.code == "batch_input_unchecked", e.value.body
    assert len(fake.objects.batches) == before


def test_a_realtime_session_cannot_use_a_stored_prompt_its_project_does_not_own(make_gateway):
    """session.update and response.create may name a stored prompt too: refused (an error event, not forwarded)
    until it is assigned to the session's project; then forwarded."""
    import asyncio

    from keyplane.testing.fake_realtime import FakeRealtime

    with FakeRealtime() as frt:
        srv = make_gateway(
            f'[[upstreams]]\nname = "fake"\nbase_url = "{frt.base_url}"\napi_key_env = "KP_TEST_UPSTREAM_KEY"\n'
            'models = ["gpt-*"]\n'
        )
        client = openai.AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0, timeout=30)

        async def go() -> list:  # type: ignore[type-arg]
            got = []
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(session={"type": "realtime", "prompt": {"id": PROMPT}})
                await conn.response.create(response={"prompt": {"id": PROMPT}})  # type: ignore[typeddict-unknown-key]
                async for ev in conn:
                    if ev.type == "error":
                        got.append(ev.error)
                    if len(got) == 2:
                        break
            return got

        errs = asyncio.run(asyncio.wait_for(go(), 20))
        assert [(e.code, e.param) for e in errs] == [("object_not_found", "prompt")] * 2
        assert [e for e in frt.events if "prompt" in e.get("session", {})] == []
        assert frt.of_type("response.create") == []

        assert _assign(srv, {"id": PROMPT, "project_id": srv.project_id}).status_code == 200

        async def again() -> None:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(session={"type": "realtime", "prompt": {"id": PROMPT}})
                async for ev in conn:
                    assert ev.type != "error", ev
                    if ev.type == "session.updated":
                        break

        asyncio.run(asyncio.wait_for(again(), 20))
        assert [e["session"]["prompt"] for e in frt.of_type("session.update") if "prompt" in e["session"]] == [
            {"id": PROMPT}
        ]


# --- the command line -----------------------------------------------------------------------------------------


def test_keyplane_objects_assign(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", f"sqlite+aiosqlite:///{home}/keyplane.db")
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
        res = runner.invoke(cli_app, list(args), catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    run("init", "--json")
    a = json.loads(run("projects", "create", "Team A", "--json").stdout)
    run("projects", "create", "Team B", "--json")
    res = run("objects", "assign", PROMPT, "Team A")
    assert f"assigned {PROMPT} (prompt) to project {a['id']}" in res.stdout
    got = json.loads(run("objects", "assign", PROMPT, a["id"], "--json").stdout)
    assert (got["id"], got["project_id"], got["kind"], got["upstream"]) == (PROMPT, a["id"], "prompt", None)
    res = run("objects", "assign", PROMPT, "Team B", code=1)
    assert "already owned by another project" in res.stderr
    res = run("objects", "assign", FT_A, "Team B", "--upstream", "no-such-upstream", code=1)
    assert "upstream" in res.stderr
    audit = json.loads(run("audit", "--type", "provider_object.assigned", "--json").stdout)
    assert len(audit) == 1 and audit[0]["project"]["id"] == a["id"]
