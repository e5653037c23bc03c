"""Issue 14 "The first hour", items 17 and the leftover, on the data plane: the demo upstream honours
``n``, logprobs, tools and base64 embeddings; 403s name keyplane's permissions; a model of a skipped
upstream answers the same 503 on GET /v1/models/{id} as on a call."""

from __future__ import annotations

import base64
import json
import struct

import openai
import pytest

from keyplane.config import DEFAULT_CONFIG
from tests.proxy.conftest import admin, new_key

MISSING = "KP_TEST_FIRST_HOUR_DEMO_UNSET_KEY"
MSG = [{"role": "user", "content": "book a table for two"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"what": {"type": "string"}, "people": {"type": "integer"}},
                "required": ["what", "people"],
            },
        },
    },
    {"type": "function", "function": {"name": "cancel", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture
def readme_setup(make_gateway, monkeypatch):
    monkeypatch.delenv(MISSING, raising=False)
    return make_gateway(DEFAULT_CONFIG.replace('"OPENAI_API_KEY"', f'"{MISSING}"'))


def sdk(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)


def test_models_retrieve_of_a_skipped_upstream_is_the_same_503(readme_setup):
    c = sdk(readme_setup)
    with pytest.raises(openai.InternalServerError) as retrieve:
        c.models.retrieve("gpt-4o-mini")
    with pytest.raises(openai.InternalServerError) as call:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert retrieve.value.status_code == call.value.status_code == 503
    assert retrieve.value.code == call.value.code == "upstream_not_configured"
    assert f"upstream openai skipped: ${MISSING} is not set" in retrieve.value.message
    assert retrieve.value.response.headers["x-should-retry"] == "false"
    assert c.models.retrieve("demo-echo").id == "demo-echo"
    with pytest.raises(openai.NotFoundError) as e:  # served by nothing at all: still 404
        c.models.retrieve("mistral-large")
    assert e.value.code == "model_not_found"


def test_a_typo_in_a_model_name_is_an_unknown_model_not_a_missing_key(readme_setup):
    """`gpt-4o-mni` matches the skipped openai upstream's `gpt-*`, but no key would make it work: OpenAI's 404
    model_not_found (not retried by the SDKs), with the close known name; a known model keeps the 503."""
    c = sdk(readme_setup)
    for call in (
        lambda: c.chat.completions.create(model="gpt-4o-mni", messages=MSG),
        lambda: c.models.retrieve("gpt-4o-mni"),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.status_code == 404 and e.value.code == "model_not_found" and e.value.param == "model"
        assert e.value.type == "invalid_request_error"
        msg = e.value.body["message"]  # type: ignore[index]
        assert msg.startswith("The model `gpt-4o-mni` does not exist or you do not have access to it.")
        assert "Did you mean `gpt-4o-mini`?" in msg and "not set" not in msg
    with pytest.raises(openai.NotFoundError) as e:  # no close name: says which upstream is skipped too
        c.chat.completions.create(model="gpt-zzz-unheard-of", messages=MSG)
    assert e.value.code == "model_not_found" and "Did you mean" not in e.value.message
    assert f"upstream openai, which would be asked, is skipped: ${MISSING} is not set" in e.value.message
    for model in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "o3-mini", "omni-moderation-latest"):
        with pytest.raises(openai.InternalServerError) as skipped:
            c.chat.completions.create(model=model, messages=MSG)
        assert skipped.value.code == "upstream_not_configured", model


def test_demo_n_choices_and_logprobs(readme_setup):
    c = sdk(readme_setup)
    one = c.chat.completions.create(model="demo-echo", messages=MSG)
    three = c.chat.completions.create(model="demo-echo", messages=MSG, n=3, logprobs=True, top_logprobs=2)
    assert [ch.index for ch in three.choices] == [0, 1, 2]
    assert {ch.message.content for ch in three.choices} == {"You said: book a table for two"}
    assert three.usage and one.usage and three.usage.completion_tokens == 3 * one.usage.completion_tokens
    lp = three.choices[0].logprobs
    assert lp and lp.content and "".join(t.token for t in lp.content) == "You said: book a table for two"
    assert all(
        t.logprob == 0.0 and len(t.top_logprobs) == 1 and bytes(t.bytes or []) == t.token.encode() for t in lp.content
    )
    assert one.choices[0].logprobs is None
    done = c.completions.create(model="demo-echo", prompt="hi there", logprobs=1)
    assert done.choices[0].logprobs and "".join(done.choices[0].logprobs.tokens or []) == "You said: hi there"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="demo-echo", messages=MSG, n=500)
    assert e.value.param == "n"
    chunks = list(c.chat.completions.create(model="demo-echo", messages=MSG, n=2, stream=True))
    assert {ch.choices[0].index for ch in chunks if ch.choices} == {0, 1}


def test_demo_stops_at_the_output_limit(readme_setup):
    """As a model does: the answer cut to max_tokens / max_completion_tokens / max_output_tokens (finish_reason
    "length", a response "incomplete"), so a priced demo model never bills more output than admission reserved."""
    c = sdk(readme_setup)
    full = "You said: book a table for two"
    for kw in ({"max_completion_tokens": 3}, {"max_tokens": 3}):
        r = c.chat.completions.create(model="demo-echo", messages=MSG, **kw)
        text = r.choices[0].message.content or ""
        assert r.choices[0].finish_reason == "length" and r.usage and 0 < r.usage.completion_tokens <= 3
        assert text and full.startswith(text) and text != full
    chunks = list(c.chat.completions.create(model="demo-echo", messages=MSG, max_tokens=3, stream=True))
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert full.startswith("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices))
    done = c.completions.create(model="demo-echo", prompt="one two three four five six", max_tokens=2)
    assert done.choices[0].finish_reason == "length" and done.usage and done.usage.completion_tokens <= 2
    resp = c.responses.create(model="demo-echo", input="one two three four five six", max_output_tokens=16)
    assert resp.status == "completed"  # it fits: untouched
    resp = c.responses.create(model="demo-echo", input="one two three four five six seven eight", max_output_tokens=3)
    assert (
        resp.status == "incomplete"
        and resp.incomplete_details
        and resp.incomplete_details.reason == "max_output_tokens"
    )
    assert resp.usage and resp.usage.output_tokens <= 3
    events = list(
        c.responses.create(model="demo-echo", input="one two three four five six", max_output_tokens=3, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    untouched = c.chat.completions.create(model="demo-echo", messages=MSG, max_tokens=100)
    assert untouched.choices[0].finish_reason == "stop" and untouched.choices[0].message.content == full


def test_the_docs_recipe_for_watching_a_spend_limit(make_gateway, monkeypatch):
    """docs/limits-and-billing.md "Trying one with the demo models": demo models priced at $100/1M, a $0.01 project
    limit; a request without an output limit reserves 4,096 output tokens (with its prompt: $0.42), more than the
    whole limit, and is told so (not "reached"); with max_tokens=20 the first ones are served, then the 429."""
    monkeypatch.delenv(MISSING, raising=False)
    config = (
        DEFAULT_CONFIG.replace('"OPENAI_API_KEY"', f'"{MISSING}"') + '\n[prices."demo-*"]\ninput = 100\noutput = 100\n'
    )
    srv = make_gateway(config)
    admin(
        srv,
        "POST",
        f"/projects/{srv.project_id}/spend_limit",
        {"currency": "USD", "interval": "month", "threshold_amount": 1},
    )
    c = sdk(srv)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="demo-echo", messages=MSG)
    assert e.value.code == "project_spend_limit_exceeded"
    assert e.value.body["message"].startswith(  # type: ignore[index]
        "This request may cost up to $0.42, more than the $0.01 left of the project spend limit"
    )
    served = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(50):
            c.chat.completions.create(model="demo-echo", messages=MSG, max_tokens=20)
            served += 1
    assert served >= 2 and e.value.code == "project_spend_limit_exceeded"


def test_demo_tool_calls(readme_setup):
    c = sdk(readme_setup)
    r = c.chat.completions.create(model="demo-echo", messages=MSG, tools=TOOLS)  # auto: the first tool
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None and ch.message.tool_calls
    call = ch.message.tool_calls[0]
    assert call.function.name == "book"
    assert json.loads(call.function.arguments) == {"what": "book a table for two", "people": 0}
    named = c.chat.completions.create(
        model="demo-echo", messages=MSG, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "cancel"}}
    )
    assert named.choices[0].message.tool_calls[0].function.name == "cancel"
    none = c.chat.completions.create(model="demo-echo", messages=MSG, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    # the tool's result sent back: the demo answers in text, so an agent loop ends
    after = c.chat.completions.create(
        model="demo-echo",
        tools=TOOLS,
        messages=[
            *MSG,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "booked"},
        ],
    )
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content
    streamed = [
        x for x in c.chat.completions.create(model="demo-echo", messages=MSG, tools=TOOLS, stream=True) if x.choices
    ]
    assert streamed[0].choices[0].delta.tool_calls[0].function.name == "book"
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_demo_base64_embeddings(readme_setup):
    c = sdk(readme_setup)
    floats = c.embeddings.create(model="demo-embed", input="hello", encoding_format="float").data[0].embedding
    raw = c.embeddings.create(model="demo-embed", input="hello", encoding_format="base64").data[0].embedding
    assert isinstance(raw, str)
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(raw))
    assert decoded == pytest.approx(floats, abs=1e-6)
    # the SDK's default asks for base64 and decodes it: the same vector
    assert c.embeddings.create(model="demo-embed", input="hello").data[0].embedding == pytest.approx(floats, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="demo-embed", input="hello", encoding_format="hex")  # type: ignore[arg-type]
    assert e.value.param == "encoding_format"


def test_403_names_keyplane_permissions_not_openai_roles(readme_setup):
    ro = new_key(readme_setup, permissions="read_only")
    c = openai.OpenAI(base_url=readme_setup.v1, api_key=ro["value"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="demo-echo", messages=MSG)
    msg = e.value.message
    assert "Missing scopes: api.model.request." in msg
    assert "Reader, Writer" not in msg and "(Member, Owner)" not in msg
    assert "(All, Restricted or Read only)" in msg and "keyplane keys permissions" in msg
