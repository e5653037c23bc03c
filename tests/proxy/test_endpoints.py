"""The proxied endpoints through the official Python SDK (sync and async, streaming and not).

Against the project's fake upstream (SQLite gateway shared by the module): what is forwarded, what
comes back, the usage learned and settled, the request errors (400/404/413).
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import orjson
import pytest

from tests.proxy.conftest import UPSTREAM_KEY, fake_config, output_limit, wait_for

MSG = [{"role": "user", "content": "Tell me something."}]


def client(gw, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0, **kw)


def test_chat_forwarded_as_sent_with_upstream_key(gw, fake):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MSG,
        max_tokens=7,
        extra_headers={"x-request-id": "req_chosen_by_client", "x-keyplane-cache": "bypass"},
    )
    done = raw.parse()
    assert done.choices[0].message.content == "Hello from the fake upstream."
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens == 5
    # The upstream's request id is passed on; processing time is ours.
    assert raw.headers["x-request-id"].startswith("req_fake")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    rec = fake.model_requests()[-1]
    assert rec.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert gw.api_key not in str(rec.headers)
    # A client cannot choose the request id (upstreams that echo it would make it the record's id).
    assert "x-request-id" not in rec.headers and "x-keyplane-cache" not in rec.headers
    assert raw.headers["x-request-id"] != "req_chosen_by_client"
    assert rec.json() == {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 7}
    (ctx,) = gw.extra["settled"]
    assert (ctx.model, ctx.upstream, ctx.status, ctx.endpoint) == ("gpt-4o-mini", "fake", 200, "/v1/chat/completions")
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (done.usage.prompt_tokens, 5)
    # keyplane's own id is the record's; the upstream's is shown as x-request-id and kept beside it.
    assert ctx.project_id == gw.project_id and ctx.request_id == raw.headers["x-keyplane-request-id"]
    assert ctx.upstream_request_id == raw.headers["x-request-id"] != ctx.request_id
    assert not ctx.disconnected and ctx.latency_ms > 0


def test_body_bytes_forwarded_unchanged(gw, fake):
    """A body that sets its own output limit reaches the upstream byte for byte (spacing, escapes, unknown fields)."""
    body = (
        b'{"model": "gpt-4o-mini",   "messages": [{"role": "user", "content": "caf\\u00e9"}], "x_custom": 1,'
        b' "max_completion_tokens": 50}'
    )
    headers = {"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json"}
    r = httpx.post(gw.v1 + "/chat/completions", content=body, headers=headers)
    assert r.status_code == 200
    assert fake.model_requests()[-1].body == body


def test_a_body_without_an_output_limit_gets_the_one_reserved_and_nothing_else(gw, fake):
    """Billing writes the output limit it reserves into a body that sets none (so the upstream writes no more than
    was reserved): the forwarded object is the one sent plus that one field."""
    sent = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\u00e9"}], "x_custom": 1}
    r = httpx.post(gw.v1 + "/chat/completions", json=sent, headers={"Authorization": f"Bearer {gw.api_key}"})
    assert r.status_code == 200
    assert orjson.loads(fake.model_requests()[-1].body) == {
        **sent,
        "max_completion_tokens": output_limit(gw, "gpt-4o-mini"),
    }


def test_request_id_generated_when_upstream_gives_none(gw, fake):
    from keyplane.testing import Behaviour

    fake.push(Behaviour(request_id=None))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.headers["x-request-id"].startswith("req_") and len(raw.headers["x-request-id"]) == 36


def test_chat_stream_strips_usage_chunk_unless_asked(gw, fake):
    chunks = list(client(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream."
    assert all(c.choices for c in chunks), "the usage chunk the client did not ask for must be stripped"
    sent = fake.model_requests()[-1].json()
    assert sent["stream_options"] == {"include_usage": True}
    ctx = gw.extra["settled"][-1]
    assert ctx.stream and ctx.completion_tokens == 5 and ctx.prompt_tokens > 0 and not ctx.usage_estimated
    assert ctx.ttft_ms is not None and ctx.ttft_ms <= ctx.latency_ms

    kept = list(
        client(gw).chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert kept[-1].choices == [] and kept[-1].usage.completion_tokens == 5
    # Asked for by the client: forwarded as sent.
    assert fake.model_requests()[-1].json()["stream_options"] == {"include_usage": True}


def test_completions_embeddings_cached_tokens(gw, fake):
    c = client(gw)
    done = c.completions.create(
        model="gpt-4o-mini", prompt="Once upon a time", extra_headers={"x-fake-cached-tokens": "2"}
    )
    assert done.choices[0].text == "Hello from the fake upstream."
    ctx = gw.extra["settled"][-1]
    assert ctx.cached_tokens == 2 and ctx.endpoint == "/v1/completions"

    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(model="gpt-4o-mini", prompt="hi", stream=True) if ch.choices
    )
    assert streamed == "Hello from the fake upstream."
    assert gw.extra["settled"][-1].completion_tokens == 5

    emb = c.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 2
    ctx = gw.extra["settled"][-1]
    assert (ctx.prompt_tokens, ctx.completion_tokens, ctx.endpoint) == (2, 0, "/v1/embeddings")


def test_responses_streaming_and_not(gw, fake):
    c = client(gw)
    r = c.responses.create(model="gpt-4o", input="hello", extra_headers={"x-fake-cached-tokens": "1"})
    assert r.output_text == "Hello from the fake upstream." and r.usage.output_tokens == 5
    assert gw.extra["settled"][-1].cached_tokens == 1

    events = list(c.responses.create(model="gpt-4o", input="hello", stream=True))
    assert events[-1].type == "response.completed"
    # Responses streams have no [DONE] to hold back: settle may land just after the last event.
    wait_for(lambda: len(gw.extra["settled"]) == 2)
    assert "stream_options" not in fake.model_requests()[-1].json()
    ctx = gw.extra["settled"][-1]
    assert ctx.completion_tokens == 5 and ctx.prompt_tokens == events[-1].response.usage.input_tokens


async def test_async_sdk_streaming_and_not(gw, fake):
    c = openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    done, stream = await asyncio.gather(
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG),
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True),
    )
    assert done.choices[0].message.content == "Hello from the fake upstream."
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == "Hello from the fake upstream."
    await c.close()


def test_demo_upstream_everything(gw):
    c = client(gw)
    assert (
        c.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "ping"}])
        .choices[0]
        .message.content
        == "You said: ping"
    )
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "ping pong"}], stream=True
        )
        if ch.choices
    )
    assert text == "You said: ping pong"
    ctx = gw.extra["settled"][-1]
    assert ctx.upstream == "demo" and ctx.completion_tokens > 0 and ctx.prompt_tokens > 0
    assert c.completions.create(model="demo-echo", prompt="abc").choices[0].text == "You said: abc"
    assert len(c.embeddings.create(model="demo-echo", input="x").data[0].embedding) == 16
    assert c.responses.create(model="demo-echo", input="yo").output_text == "You said: yo"
    final = list(c.responses.create(model="demo-echo", input="yo", stream=True))[-1]
    assert final.type == "response.completed" and final.response.usage.output_tokens > 0


def test_models_list_and_retrieve(gw):
    c = client(gw)
    ids = [m.id for m in c.models.list()]
    # Only what some usable upstream serves: the fake's list filtered by its globs, and demo's.
    assert ids == sorted(ids) and "demo-echo" in ids and "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert c.models.retrieve("gpt-4o").owned_by == "fake-upstream"
    assert c.models.retrieve("gpt-4o-nonexistent-but-glob").id == "gpt-4o-nonexistent-but-glob"
    with pytest.raises(openai.NotFoundError) as ei:
        c.models.retrieve("claude-3")
    assert ei.value.code == "model_not_found"


def test_model_not_found(gw, fake):
    with pytest.raises(openai.NotFoundError) as ei:
        client(gw).chat.completions.create(model="llama-9", messages=MSG)
    assert ei.value.code == "model_not_found" and ei.value.param == "model"
    assert ei.value.body["message"] == "The model `llama-9` does not exist or you do not have access to it."
    assert fake.model_requests() == []


def _post(gw, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json", **headers},
    )


def test_malformed_json_and_missing_model(gw, fake):
    r = _post(gw, b'{"model": "gpt-4o-mini", "messages": [')
    assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]
    r = _post(gw, b'["not", "an", "object"]')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body"
    r = _post(gw, b'{"messages": []}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = _post(gw, b'{"model": 42}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client(gw).chat.completions.create(model="", messages=MSG)
    assert fake.model_requests() == []


def test_body_too_large(make_gateway, fake):
    srv = make_gateway(fake_config(fake), KEYPLANE_MAX_BODY_BYTES="20000")
    limit = srv.settings.max_body_bytes
    assert limit == 20000
    big = b'{"model": "gpt-4o-mini", "pad": "' + b"x" * (limit + 10) + b'"}'
    r = _post(srv, big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and r.headers["x-request-id"].startswith("req_")

    def chunks():
        yield b'{"model": "gpt-4o-mini", "pad": "'
        for _ in range(5):
            yield b"y" * 5000
        yield b'"}'

    r = httpx.post(
        srv.v1 + "/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"},
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert fake.model_requests() == []
    ok = _post(srv, b'{"model": "gpt-4o-mini", "messages": []}')
    assert ok.status_code == 200


def test_passthrough_and_refused_paths(gw, fake):
    r = httpx.get(gw.v1 + "/files", headers={"Authorization": f"Bearer {gw.api_key}"})
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert fake.model_requests()[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # Covered by an area but not served by the upstream: its 404 comes back in OpenAI's shape.
    r = httpx.get(gw.v1 + "/assistants", headers={"Authorization": f"Bearer {gw.api_key}"})
    assert r.status_code == 404 and "error" in r.json()
    # No permission area covers it: refused without an upstream call.
    n = len(fake.model_requests())
    r = httpx.post(gw.v1 + "/something/else", json={}, headers={"Authorization": f"Bearer {gw.api_key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert len(fake.model_requests()) == n


def test_admission_hook_headers_and_refusal(gw, fake):
    from keyplane import errors

    seen = []

    class Billing:  # a billing step of the pipeline's shape (keyplane.pipeline.Billing)
        async def admit(self, ctx):
            seen.append((ctx.model, ctx.stream, ctx.max_tokens, ctx.key.id))
            ctx.extra_headers.append((b"x-ratelimit-remaining-requests", b"41"))
            if ctx.model == "gpt-4o":
                raise errors.APIError(
                    429,
                    "Rate limit reached",
                    type="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": "20"},
                )

        async def settle(self, ctx):
            pass

    gw.app.runtime.pipeline.billing = Billing()
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=9)
    assert raw.headers["x-ratelimit-remaining-requests"] == "41"
    assert seen[-1][:3] == ("gpt-4o-mini", False, 9)
    n = len(fake.model_requests())
    with pytest.raises(openai.RateLimitError) as ei:
        client(gw).chat.completions.create(model="gpt-4o", messages=MSG)
    assert ei.value.response.headers["x-ratelimit-remaining-requests"] == "41"
    assert ei.value.response.headers["retry-after"] == "20"
    assert len(fake.model_requests()) == n  # refused before the upstream
    # Upstream rate-limit headers describe the provider account, not the client's key: not passed on.
    fake_h = [h for h in raw.headers if h.startswith("x-ratelimit-") and h != "x-ratelimit-remaining-requests"]
    assert fake_h == []
