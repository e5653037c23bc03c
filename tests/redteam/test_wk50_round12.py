"""Week 50 red-team review, round 12: request shapes a holder of a valid project key may use to get past a hard
spend limit, reach another project's provider objects, or outlive a revocation. Each test states the secure
behaviour and is marked xfail (strict) while the hole is open (tests/redteam/conftest.py: the gateway on the fake
upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import websockets
from aiohttp import web

from tests.billing.conftest import PRICED, UPSTREAM_KEY_ENV
from tests.redteam.conftest import serve_routes as _serve
from tests.redteam.test_wk49_round4 import _limit, _project
from tests.redteam.test_wk50_round10 import MSG, _code, _post
from tests.redteam.test_wk50_round11 import _settled


def _upstream(port: int, models: str = '["gpt-*"]', prices: str = PRICED, extra: str = "") -> str:
    return (
        f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = {models}\nmax_retries = 0\n{extra}\n\n' + prices
    )


def _owned(srv, oid: str, project_id: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    from keyplane.store.models import ProviderObject, provider_object_key

    store = srv.app.runtime.features.proxy.tenancy.store
    row = ProviderObject(
        id=provider_object_key(oid), project_id=project_id, object=kind, upstream="openai", created_at=0
    )
    srv.call(store.record([row]))


class _Recorder:
    """A provider that records every request (method, path, body) and answers a small chat completion or
    response."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

        async def any_(req: web.Request) -> web.StreamResponse:
            body = await req.read()
            self.seen.append((req.method, req.path, body))
            if req.path.endswith("/responses"):
                out = {"type": "message", "id": "msg_r12", "role": "assistant", "content": []}
                usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
                return web.json_response(
                    {"id": "resp_r12x", "object": "response", "status": "completed", "output": [out], "usage": usage}
                )
            choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            return web.json_response(
                {"id": "chatcmpl-r12", "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        self.port = _serve({("POST", "/v1/responses"): any_, ("POST", "/v1/chat/completions"): any_})


# --- 1. an image generation call named by id ----------------------------------------------------------------------


def test_an_image_generation_call_named_by_id_is_held_to_its_owner(make_gw):
    """OpenAI's image generation guide (multi-turn editing, "Using image ID") passes an earlier image back by its id
    alone: `{"type": "image_generation_call", "id": "ig_..."}`; the provider reads the image from what it stored
    under its key (every project's). proxy/object_refs.py _is_item_reference only takes `item_reference` and a
    reasoning item without its encrypted_content as references (and an untyped item with an id), so project B names
    project A's generated image (an output item keyplane recorded as A's) and has the provider edit or describe it.
    Expected: 404 object_not_found before any upstream call, as for an item_reference to it (asserted first)."""
    up = _Recorder()
    srv = make_gw(config_text=_upstream(up.port))
    pa, _ = _project(srv)
    _, key_b = _project(srv)
    _owned(srv, "ig_team_a_0123456789", pa, "item")
    ref = {"model": "gpt-4o-mini", "max_output_tokens": 5, "tools": [{"type": "image_generation"}]}
    r = _post(srv, key_b, "/responses", {**ref, "input": [{"type": "item_reference", "id": "ig_team_a_0123456789"}]})
    assert r.status_code == 404, r.text[:200]  # the control: a reference to A's item is refused
    user = {"role": "user", "content": "make it look realistic"}
    call = {"type": "image_generation_call", "id": "ig_team_a_0123456789"}
    r = _post(srv, key_b, "/responses", {**ref, "input": [user, call]})
    assert r.status_code == 404 and _code(r) == "object_not_found", (r.status_code, r.text[:200])
    assert up.seen == []


# --- 2. a realtime session opened on another project's fine-tuned model -------------------------------------------


def test_a_realtime_session_cannot_open_another_projects_fine_tuned_model(make_gw, fake):
    """docs/proxy.md: a fine-tuned model made through keyplane is its project's own; another project naming it
    answers 404 model_not_found. The HTTP paths (proxy/intake.py own_model) and the realtime client events
    (object_refs.event_refs) hold it, but the WebSocket handshake's `?model=` (proxy/realtime.py RealtimeApp._check)
    and a client secret's bound `session.model` (client_secrets.mint) are only held to model permissions: project B
    opens a realtime session on project A's fine-tuned model (trained on A's data) under the shared provider key.
    Expected: the handshake refused before any upstream connection (a chat completion naming it is, asserted first)."""
    from keyplane.testing.fake_realtime import FakeRealtime

    ft = "ft:gpt-realtime-2025-08-28:acme:team-a:Zz9Yy8Xx"
    with FakeRealtime() as frt:
        srv = make_gw(config_text=_upstream(frt.port, models='["gpt-*", "ft:*"]'))
        pa, _ = _project(srv)
        _, key_b = _project(srv)
        _owned(srv, ft, pa, "model")
        r = _post(srv, key_b, "/chat/completions", {"model": ft, "messages": MSG, "max_tokens": 5})
        assert r.status_code == 404 and _code(r) == "model_not_found", r.text[:200]  # the control

        async def go() -> str:
            url = srv.base_url.replace("http://", "ws://") + "/v1/realtime?model=" + ft
            try:
                async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key_b}"}) as ws:
                    return orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
            except websockets.InvalidStatus as e:
                return f"refused {e.response.status_code}"

        got = asyncio.run(go())
        assert got.startswith("refused"), got
        assert frt.paths == [], frt.paths


# --- 3. a revoked key's call that sends nothing for a while ---------------------------------------------------------


class _Silent:
    """A provider that thinks before it answers: a non-streamed chat completion comes after ``delay`` s; a streamed
    one sends a role chunk at once, then nothing for ``delay`` s (a reasoning model's hidden reasoning), then its
    text and usage. ``closed`` is set when keyplane drops the connection before the end."""

    def __init__(self, delay: float = 4.0) -> None:
        self.closed: list[float] = []

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            usage = {"prompt_tokens": 1, "completion_tokens": 3000, "total_tokens": 3001}
            if not body.get("stream"):
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    self.closed.append(asyncio.get_running_loop().time())
                    raise
                choice = {"index": 0, "message": {"role": "assistant", "content": "answer"}, "finish_reason": "stop"}
                return web.json_response(
                    {"id": "chatcmpl-s", "object": "chat.completion", "choices": [choice], "usage": usage}
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": body["model"]}
            first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            await resp.write(b"data: " + orjson.dumps(first) + b"\n\n")
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.closed.append(asyncio.get_running_loop().time())
                raise
            text = {**base, "choices": [{"index": 0, "delta": {"content": "answer"}, "finish_reason": "stop"}]}
            await resp.write(b"data: " + orjson.dumps(text) + b"\n\n")
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp

        self.port = _serve({("POST", "/v1/chat/completions"): chat})


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "silent-stream"])
def test_a_revoked_keys_call_ends_within_a_second_even_when_the_upstream_is_silent(make_gw, stream):
    """DESIGN.md rule 1: "A revoked key is refused by every instance within one second", and the promise: no key
    outlives a revocation. proxy/handler.py checks `_authority_ended` once per chunk the upstream relays
    (_relay_sse, _relay_raw), and never while it waits: a non-streamed call (forwarder.send reads the whole answer)
    or a stream whose upstream is silent (a reasoning model's hidden reasoning) goes on after the key is revoked,
    the provider generating (and billing) all of it, and a non-streamed answer is delivered whole to the revoked
    key. Here the key is revoked 0.5 s into a call the provider answers after 4 s. Expected: the call ends within
    about a second of the revocation (an error to the client, the upstream connection dropped), as a stream that
    keeps writing is cut (tests/redteam/test_wk50_round8.py)."""
    from tests.proxy.conftest import admin

    up = _Silent()
    srv = make_gw(config_text=_upstream(up.port))
    pid, _ = _project(srv)
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon revoked"})

    async def go() -> tuple[float, int, bytes]:
        body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5000, "stream": stream}
        h = {"Authorization": f"Bearer {k['value']}"}

        async def revoke() -> float:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(admin, srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}")
            return asyncio.get_running_loop().time()

        task = asyncio.ensure_future(revoke())
        async with (
            httpx.AsyncClient(timeout=30) as c,
            c.stream("POST", srv.v1 + "/chat/completions", json=body, headers=h) as r,
        ):
            out = b"".join([x async for x in r.aiter_raw()])
            status = r.status_code
        revoked = await task
        return asyncio.get_running_loop().time() - revoked, status, out

    after, status, out = asyncio.run(go())
    assert after < 2.0 and not (status == 200 and b"answer" in out), (round(after, 2), status, out[-200:])


# --- 4. an image input billed past what keyplane takes for the most any model bills -------------------------------

# OpenAI's vision guide: gpt-4o-mini bills an image at detail high as 2,833 base tokens + 5,667 per 512 px tile
# (priced at its input rate, so that an image costs what it does on gpt-4o); a 2048x768 image is 8 tiles: 48,169.
_MINI_IMAGE_TOKENS = 2_833 + 8 * 5_667


def test_an_input_image_is_reserved_at_what_its_model_may_bill(make_gw):
    """limits/tokens.py counts every input image at IMAGE_TOKENS_MAX = 6,000 tokens, "the most any current model
    bills for one image". gpt-4o-mini bills images at 2,833 + 5,667 tokens per 512 px tile at detail high (OpenAI's
    vision guide; so that an image costs on it what it costs on gpt-4o): a 2048x768 image is 48,169 tokens, 8x what
    is reserved. Two such images fit its context window (96k tokens), are reserved at 12k and billed at 96k: a
    project with a 30-cent spend limit (here input at $16 per 1M tokens) is admitted with 20 cents reserved and
    billed $1.54, five times its hard limit, in one request; concurrent ones multiply it. Expected: an image
    reserved at the most its model may bill (the model's figure, or the context window when unknown), so that the
    limit holds."""
    prices = '[prices."gpt-4o-mini"]\ninput = 16\noutput = 1600\ncontext_window = 128000\n'

    async def chat(req: web.Request) -> web.StreamResponse:
        choice = {"index": 0, "message": {"role": "assistant", "content": "two"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 2 * _MINI_IMAGE_TOKENS + 12, "completion_tokens": 1, "total_tokens": 1}
        return web.json_response(
            {"id": "chatcmpl-img", "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    srv = make_gw(config_text=_upstream(_serve({("POST", "/v1/chat/completions"): chat}), prices=prices))
    pid, key = _project(srv)
    _limit(srv, pid, 30)  # 300,000 micro-dollars
    image = {"type": "image_url", "image_url": {"url": "https://example.com/wide-2048x768.png", "detail": "high"}}
    msg = [{"role": "user", "content": [{"type": "text", "text": "how many birds?"}, image, image]}]
    r = _post(srv, key, "/chat/completions", {"model": "gpt-4o-mini", "messages": msg, "max_tokens": 5})
    if r.status_code == 429:  # refused: the limit holds
        return
    assert r.status_code == 200, r.text[:200]
    spent = _settled(srv, pid)
    assert spent <= 300_000, f"spent {spent} micro-dollars under a 300,000 hard limit"


# --- 5. a previous audio answer named by id on chat completions ----------------------------------------------------


def test_a_previous_audio_answer_named_by_id_is_held_to_its_owner(make_gw):
    """Chat completions with audio output: a later turn gives the assistant's earlier answer back as
    `{"role": "assistant", "audio": {"id": "audio_..."}}` ("Data about a previous audio response from the model"),
    and the provider reads that audio (and its transcript) from what it keeps under its key, every project's. No
    field of proxy/object_refs.py REF_FIELDS covers it, and keyplane records no owner for the audio ids its answers
    carry: project B names project A's audio answer and has the model repeat or transcribe it. Expected: 404
    object_not_found before any upstream call unless the caller's project made it (a file id in the same message is
    refused, asserted first)."""
    up = _Recorder()
    srv = make_gw(config_text=_upstream(up.port))
    pa, _ = _project(srv)
    _, key_b = _project(srv)
    _owned(srv, "file-team-a-0123456789", pa, "file")
    _owned(srv, "audio_team_a_0123456789", pa, "audio")
    ask = {"role": "user", "content": "repeat what you said, word for word"}
    base = {"model": "gpt-4o-mini", "max_tokens": 5}
    part = {"type": "file", "file": {"file_id": "file-team-a-0123456789"}}
    r = _post(srv, key_b, "/chat/completions", {**base, "messages": [{"role": "user", "content": [part]}]})
    assert r.status_code == 404, r.text[:200]  # the control
    said = {"role": "assistant", "audio": {"id": "audio_team_a_0123456789"}}
    r = _post(srv, key_b, "/chat/completions", {**base, "messages": [said, ask]})
    assert r.status_code == 404 and _code(r) == "object_not_found", (r.status_code, r.text[:200])
    assert up.seen == []


class _Speaker:
    """A provider whose chat answers carry audio: `choices[0].message.audio.id` (JSON) or `delta.audio.id`
    (streamed), a new id per answer; every request body is kept."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.read()
            self.seen.append(body)
            aid = f"audio_{len(self.seen)}x0123456789"
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            if not orjson.loads(body).get("stream"):
                audio = {"data": "AAAA", "expires_at": 1, "transcript": 'said "id": "audio_victim"', "id": aid}
                msg = {"role": "assistant", "content": None, "audio": audio}
                choice = {"index": 0, "message": msg, "finish_reason": "stop"}
                return web.Response(
                    body=orjson.dumps(
                        {"id": "chatcmpl-a", "object": "chat.completion", "choices": [choice], "usage": usage}
                    ),
                    content_type="application/json",
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            base = {"id": "chatcmpl-a", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
            delta = {"role": "assistant", "audio": {"id": aid, "transcript": "hi", "data": "AAAA", "expires_at": 1}}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp

        self.port = _serve({("POST", "/v1/chat/completions"): chat})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_an_audio_answer_is_its_projects_own_to_give_back(make_gw, stream):
    """The other side of test 5: the audio ids of a project's own answers (streamed or not) are recorded as its own,
    so its next turn may give one back by id; another project naming it is refused. A transcript that spells an
    id is not taken for one."""
    up = _Speaker()
    srv = make_gw(config_text=_upstream(up.port))
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    base = {"model": "gpt-4o-mini", "max_tokens": 5, "modalities": ["text", "audio"]}
    ask = {"role": "user", "content": "hello"}
    body = {
        **base,
        "messages": [ask],
        **({"stream": True, "stream_options": {"include_usage": True}} if stream else {}),
    }
    r = _post(srv, key_a, "/chat/completions", body)
    assert r.status_code == 200, r.text[:200]
    said = {"role": "assistant", "audio": {"id": "audio_1x0123456789"}}
    r = _post(srv, key_a, "/chat/completions", {**base, "messages": [ask, said, ask]})
    assert r.status_code == 200, r.text[:200]
    r = _post(srv, key_b, "/chat/completions", {**base, "messages": [ask, said, ask]})
    assert r.status_code == 404 and _code(r) == "object_not_found", r.text[:200]
    victim = {"role": "assistant", "audio": {"id": "audio_victim"}}
    r = _post(srv, key_a, "/chat/completions", {**base, "messages": [ask, victim, ask]})
    assert r.status_code == 404, r.text[:200]


def test_output_items_replayed_with_their_content_name_nothing(make_gw):
    """The other side of test 1: a stateless client (store: false) gives a response's output back as input, each
    item with its id and its content; no stored item is read, so none needs an owner. An item of a type keyplane
    does not know, reduced to its id, is a reference."""
    up = _Recorder()
    srv = make_gw(config_text=_upstream(up.port))
    _, key = _project(srv)
    items = [
        {"role": "user", "content": "draw a cat"},
        {
            "type": "message",
            "id": "msg_never_stored",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "id": "fc_never_stored", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "image_generation_call", "id": "ig_never_stored", "status": "completed", "result": "aGk="},
        {"type": "reasoning", "id": "rs_never_stored", "summary": [], "encrypted_content": "gAAA"},
    ]
    body = {"model": "gpt-4o-mini", "max_output_tokens": 5, "store": False, "input": items}
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 200, r.text[:300]
    bare = {"type": "some_future_call", "id": "sfc_never_stored", "status": "completed"}
    r = _post(srv, key, "/responses", {**body, "input": [*items, bare]})
    assert r.status_code == 404 and _code(r) == "object_not_found", r.text[:200]
