"""Attacks on the access policies through real HTTP (the official SDK), each one the regression test of a fix:
GET /v1/models answering only permitted models; model spellings a deny list missed (a dated fine-tune, a
namespaced id, lookalike characters); a request naming no model so the provider picks one; an allow list
read too loosely; a thread run using its assistant's stored tools. Every upstream here serves every model
name (``models = ["*"]``), so what slips past the policy reaches the fake upstream and is seen there."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from keyplane.testing import FakeUpstream
from tests.proxy.conftest import fake_config, new_key
from tests.support import Gateways, RunningServer

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def open_gw(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[RunningServer]:
    srv = gateways.start(fake_config(fake, models=["*"]), store=database_url)
    yield srv
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


def _policy(srv: RunningServer, body: dict[str, object], key_id: str | None = None, kind: str = "model") -> None:
    path = f"/projects/{srv.project_id}" + (f"/api_keys/{key_id}" if key_id else "")
    what = "model_permissions" if kind == "model" else "hosted_tool_permissions"
    r = httpx.post(
        f"{srv.v1}/organization{path}/{what}", json=body, headers={"Authorization": f"Bearer {srv.admin_key}"}
    )
    assert r.status_code == 200, r.text


def _refused(call: Callable[[], object], code: str, fake: FakeUpstream) -> openai.PermissionDeniedError:
    fake.reset()
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.code == code, e.value.body
    assert fake.model_requests() == [], "the refused request reached the upstream"
    return e.value


def test_models_list_and_retrieve_follow_model_permissions(open_gw, fake):
    srv = open_gw
    client = openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    everything = {m.id for m in client.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"} <= everything

    _policy(srv, {"mode": "allow_list", "model_ids": ["gpt-4o-mini", "text-embedding-3-small"]})
    listed = {m.id for m in client.models.list()}
    assert listed == {"gpt-4o-mini", "text-embedding-3-small"}, listed
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    fake.reset()
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert "gpt-4o" in e.value.message and "permission" not in e.value.message  # as if it did not exist

    # HEAD is answered like GET, from the same filtered list: never passed to the upstream to probe.
    head = {"Authorization": f"Bearer {srv.api_key}"}
    fake.reset()
    assert httpx.head(f"{srv.v1}/models/gpt-4o", headers=head).status_code == 404
    assert httpx.head(f"{srv.v1}/models/gpt-4o-mini", headers=head).status_code == 200
    assert httpx.head(f"{srv.v1}/models", headers=head).status_code == 200
    assert [r.path for r in fake.model_requests() if r.path != "/v1/models"] == []

    # A key's own deny list narrows further, for that key only.
    other = new_key(srv)
    _policy(srv, {"mode": "deny_list", "model_ids": ["text-embedding-*"]}, key_id=other["id"])
    narrowed = openai.OpenAI(base_url=srv.v1, api_key=other["value"], max_retries=0)
    assert {m.id for m in narrowed.models.list()} == {"gpt-4o-mini"}
    with pytest.raises(openai.NotFoundError):
        narrowed.models.retrieve("text-embedding-3-small")
    assert client.models.retrieve("text-embedding-3-small").id == "text-embedding-3-small"


@pytest.mark.parametrize(
    "model",
    [
        "ft:gpt-4o-2024-08-06:acme::abc123",  # a fine-tune of a snapshot: how OpenAI names every fine-tune
        "openai/gpt-4o",  # a provider namespace (OpenRouter-style upstreams)
        "\uff47\uff50\uff54-4o",  # fullwidth letters (NFKC folds them to gpt-4o)
        "gpt-4o\u200b",  # a zero-width space
        "gpt-4\u043e",  # a Cyrillic o
    ],
)
def test_deny_list_spellings(open_gw, fake, model):
    _policy(open_gw, {"mode": "deny_list", "model_ids": ["gpt-4o"]})
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    _refused(lambda: client.chat.completions.create(model=model, messages=MSG), "model_not_permitted", fake)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices


def test_allow_list_is_read_exactly(open_gw, fake):
    _policy(open_gw, {"mode": "allow_list", "model_ids": ["gpt-4o-mini"]})
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    for model in ("gpt-4o-mini-2024-07-18-custom", "gpt-4o-mini-2024-07-18x", "openai/gpt-4o-mini"):
        _refused(lambda m=model: client.chat.completions.create(model=m, messages=MSG), "model_not_permitted", fake)
    # Its snapshots and its fine-tunes are still its own.
    assert client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MSG).choices
    assert client.chat.completions.create(model="ft:gpt-4o-mini-2024-07-18:acme::x1", messages=MSG).choices


def test_no_model_means_the_provider_picks_one(open_gw, fake):
    """images.generate without `model` is dall-e-2, or gpt-image-1 when a parameter only it takes is sent."""
    _policy(open_gw, {"mode": "deny_list", "model_ids": ["gpt-image-1"]})
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    e = _refused(lambda: client.images.generate(prompt="a cat", output_format="png"), "model_not_permitted", fake)
    assert "names no model" in e.message
    _refused(lambda: client.images.generate(model="gpt-image-1", prompt="a cat"), "model_not_permitted", fake)
    png = io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    png.name = "x.png"
    # Multipart uploads: the form's `model` is checked, and its absence too.
    _refused(lambda: client.images.edit(image=png, prompt="a hat", model="gpt-image-1"), "model_not_permitted", fake)
    png.seek(0)
    _refused(lambda: client.images.edit(image=png, prompt="a hat"), "model_not_permitted", fake)
    # A run without `model` uses its assistant's: refused under a deny list too (the run may name one).
    _refused(
        lambda: client.post("/threads/thread_1/runs", cast_to=object, body={"assistant_id": "asst_1"}),
        "model_not_permitted",
        fake,
    )
    assert client.images.generate(model="dall-e-3", prompt="a cat").data


def test_runs_use_their_assistants_stored_tools(open_gw, fake):
    """An assistant made before the policy may hold the disabled tool; keyplane cannot see its stored tools."""
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    _policy(open_gw, {"code_interpreter": {"enabled": False}}, kind="tools")
    run = {"assistant_id": "asst_1", "model": "gpt-4o-mini"}
    for path in ("/threads/thread_1/runs", "/threads/runs"):
        e = _refused(lambda p=path: client.post(p, cast_to=object, body=run), "tool_not_permitted", fake)
        assert "code_interpreter" in e.message and "`tools`" in e.message
        _refused(lambda p=path: client.post(p, cast_to=object, body={**run, "tools": None}), "tool_not_permitted", fake)
    # Naming the run's tools overrides the assistant's: past the policy (then the assistant, which this
    # project does not own, is not found: proxy/tenancy.py), and what it names is checked as usual.
    with pytest.raises(openai.NotFoundError, match="Assistant"):
        client.post(
            "/threads/runs",
            cast_to=object,
            body={**run, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        )
    _refused(
        lambda: client.post("/threads/runs", cast_to=object, body={**run, "tools": [{"type": "code_interpreter"}]}),
        "tool_not_permitted",
        fake,
    )


TOOL_VARIANTS = [
    {"tools": [{"type": "web_search_2025_08_26"}]},
    {"tools": [{"type": " Web-Search-Preview "}]},
    {"tools": [{"TYPE": "web_search"}]},
    {"tool_choice": "web_search_preview"},
    {
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]},
    },
    {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        ]
    },
]


@pytest.mark.parametrize("extra", TOOL_VARIANTS)
def test_tool_spellings_are_held(open_gw, fake, extra):
    _policy(open_gw, {"web_search": {"enabled": False}}, kind="tools")
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    body = {"model": "gpt-4o-mini", "input": "hi", **extra}
    _refused(lambda: client.post("/responses", cast_to=object, body=body), "tool_not_permitted", fake)


def test_a_hosted_tool_runs_its_default_model(open_gw, fake):
    """The image_generation tool runs gpt-image-1 unless its entry names another model."""
    _policy(open_gw, {"mode": "deny_list", "model_ids": ["gpt-image-1"]})
    client = openai.OpenAI(base_url=open_gw.v1, api_key=open_gw.api_key, max_retries=0)
    for tool in (
        {"type": "image_generation"},
        {"type": "image_generation", "model": None},
        {"type": "image_generation", "model": "gpt-image-1"},
    ):
        e = _refused(
            lambda t=tool: client.responses.create(model="gpt-4o-mini", input="draw", tools=[t]),
            "model_not_permitted",
            fake,
        )
        assert "gpt-image-1" in e.message
    fake.reset()
    assert client.responses.create(
        model="gpt-4o-mini", input="draw", tools=[{"type": "image_generation", "model": "gpt-image-1-mini"}]
    )
    assert len(fake.model_requests()) == 1
