"""Week 50 red-team review, round 10: request shapes a holder of a valid key might use to get past a hard spend
limit, reach outside its permissions or steer the upstream. Each test of a hole states the secure behaviour and
is marked xfail (strict) until fixed; the others pin what held (tests/redteam/conftest.py: the gateway on the fake
upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest
from aiohttp import web

from tests.billing.conftest import PRICED, UPSTREAM_KEY_ENV
from tests.redteam.conftest import serve_routes as _serve
from tests.redteam.test_wk49_round4 import _limit, _project, _spent

MSG = [{"role": "user", "content": "hi"}]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _upstream(port: int, extra: str = "", prices: str = PRICED) -> str:
    return (
        f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 0\n{extra}\n\n' + prices
    )


def _post(srv, key: str, path: str, body: bytes | dict, headers: dict | None = None):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(srv.v1 + path, content=raw, headers=h, timeout=30)


def _code(r: httpx.Response) -> str | None:
    return r.json().get("error", {}).get("code") if r.status_code >= 400 else None


# --- 1. a Responses stream whose usage is never read -------------------------------------------------------------

# A reasoning model's answer: 2 visible words, 5,000 output tokens (most of them reasoning, never streamed as text).
_OUTPUT_TOKENS = 5_000
_BILLED = _OUTPUT_TOKENS * 1600  # micro-dollars at PRICED gpt-4o-mini's $1600 per 1M output tokens


def _event(kind: str, **fields: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


class _Reasoner:
    """A provider streaming Responses as OpenAI does: `response.created` echoes the request's `instructions` and
    `metadata` (the response object), deltas of the visible text, then `response.completed` with the usage."""

    def __init__(self) -> None:
        async def responses(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            base = {
                "id": "resp_r10",
                "object": "response",
                "status": "in_progress",
                "model": body.get("model"),
                "instructions": body.get("instructions"),
                "metadata": body.get("metadata") or {},
                "output": [],
                "usage": None,
            }
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            await resp.write(_event("response.created", response=base, sequence_number=0))
            await resp.write(_event("response.output_text.delta", item_id="msg_1", delta="Hi there", sequence_number=1))
            usage = {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": _OUTPUT_TOKENS,
                "output_tokens_details": {"reasoning_tokens": _OUTPUT_TOKENS - 2},
                "total_tokens": 10 + _OUTPUT_TOKENS,
            }
            done = {**base, "status": "completed", "usage": usage}
            await resp.write(_event("response.completed", response=done, sequence_number=2))
            return resp

        self.port = _serve({"/v1/responses": responses})


def _stream_response(srv, key: str, **fields: object) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 6_000, "stream": True, **fields}
    return _post(srv, key, "/responses", body)


@pytest.mark.parametrize(
    "fields",
    [{"instructions": "response.completed"}, {"metadata": {"note": "response.failed"}}],
    ids=["instructions", "metadata"],
)
def test_a_responses_stream_echoing_a_terminal_event_name_is_billed_its_usage(make_gw, fields):
    """(Open when this round began; fixed in the working tree during it: kept as a regression test.)
    proxy/sse.py StreamRelay._inspect finds the terminal event of a Responses stream by the bytes
    `"response.completed"` (`.incomplete`, `.failed`) anywhere in an event, parses the usage of the FIRST event
    holding them, and from then on holds every later chunk without parsing it (`if self.kind == RESPONSES and
    self.held: self.held += out; return b""`). `response.created` echoes the request's own strings (instructions,
    metadata, user, prompt_cache_key...) unescaped: a request whose `instructions` (or a metadata value) is exactly
    `response.completed` makes `response.created` the "terminal" event (its usage is null), and the real
    `response.completed` is never read. handler._usage_from_relay then bills an ESTIMATE: the prompt counted from
    the body and the visible deltas' text. Here a 5,000-token reasoning answer ($8.00 at the provider) is billed 2
    tokens ($0.0032); hosted tool calls, input held at the provider (previous_response_id, files) and the service
    tier are dropped the same way. Each request still fits its reservation, but the ledger keeps the estimate, so
    the budget is freed for the next: a limit is passed by as many times as there are requests. The same request
    without the string (asserted first) is billed its usage. Expected: the terminal event is recognised by its
    `type`, and its usage is billed."""
    port = _Reasoner().port
    srv = make_gw(config_text=_upstream(port))
    pid, key = _project(srv)
    r = _stream_response(srv, key)
    assert r.status_code == 200 and b"response.completed" in r.content, r.text[:300]
    assert _spent(srv, pid)[0] == _BILLED  # the control: the usage of response.completed
    r = _stream_response(srv, key, **fields)
    assert r.status_code == 200 and b'"usage":{"input_tokens"' in r.content, r.text[:300]
    assert _spent(srv, pid)[0] == 2 * _BILLED, f"billed {_spent(srv, pid)[0] - _BILLED} micros, provider {_BILLED}"


# --- 2. stored prompts: provider objects no project owns -----------------------------------------------------


def test_a_stored_prompt_keyplane_never_saw_is_refused_like_any_unowned_object(make_gw, fake):
    """docs/proxy.md: "An id keyplane never saw created (made at the provider directly ...) is owned by no project
    and is refused the same way: fail closed", and security.md #9: "every id a body names (in any field ...) is
    checked before the upstream call". A stored prompt (`prompt: {"id": "pmpt_...", "version": ...}`) is such an
    object: it lives in the provider project every keyplane project shares, is made in the provider's dashboard
    (never through keyplane), and carries instructions, variables and TOOLS (file_search over a vector store,
    code interpreter over files, MCP servers) that run under the shared key. proxy/object_refs.py REF_FIELDS has
    no `prompt`, and `{"id": ...}` under `prompt` is neither an item reference nor in an item list, so any project
    runs any team's stored prompt: its hidden instructions, and its file_search over a vector store the caller
    could not name itself (`vector_store_ids` of another project is a 404). Expected: 404 object_not_found
    (param `prompt`) before any upstream call, unless the prompt id is assigned to the caller's project."""
    srv = make_gw()
    _, key = _project(srv)
    body = {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_team_a_0123456789abcdef", "version": "3"}, "input": "hi"}
    body["max_output_tokens"] = 5
    fake.requests.clear()
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 404 and _code(r) == "object_not_found", (r.status_code, r.text[:200])
    assert fake.model_requests() == []


def test_held_another_projects_vector_store_named_in_a_tool_is_refused(make_gw, fake):
    """The control: the same request naming a vector store keyplane never saw, directly in a file_search tool."""
    srv = make_gw()
    _, key = _project(srv)
    tool = {"type": "file_search", "vector_store_ids": ["vs_team_a_0123456789abcdef"]}
    body = {"model": "gpt-4o-mini", "input": "hi", "tools": [tool], "max_output_tokens": 5}
    fake.requests.clear()
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 404 and _code(r) == "object_not_found", r.text[:200]
    assert fake.model_requests() == []


# --- 3. headers the operator sets on an upstream ------------------------------------------------------------


class _HeaderEcho:
    """A provider answering chat completions with the values of each header it was sent (aiohttp keeps them all,
    in order; `request.headers.get` and Starlette's `Headers.get` return the FIRST)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, list[str]]] = []

        async def chat(req: web.Request) -> web.StreamResponse:
            self.seen.append({k.lower(): req.headers.getall(k) for k in req.headers})
            return web.json_response(
                {
                    "id": "chatcmpl-r10",
                    "object": "chat.completion",
                    "model": "gpt-4o-mini",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )

        self.port = _serve({"/v1/chat/completions": chat})


def test_a_client_cannot_send_a_header_the_operator_set_on_the_upstream(make_gw):
    """`[[upstreams]] headers = {...}` are the operator's ("extra headers sent upstream (e.g. `api-version` for
    Azure)"): what selects the provider deployment, tenant, virtual key or gateway credential behind base_url
    (Azure `api-version`, Portkey `x-portkey-virtual-key` / `x-portkey-config`, Cloudflare AI Gateway
    `cf-aig-authorization`, Helicone `Helicone-Auth`, an internal router's tenant header). proxy/upstream.py
    forward_headers passes every client header not in DROP_REQUEST and APPENDS the configured ones: a client that
    sends the same header name reaches the upstream FIRST, and the usual servers (aiohttp, Starlette, Go's
    Header.Get, most proxies) read the first value. A key of team A sends `X-Tenant: team-b` and is served (and
    billed upstream) as team B, or names its own virtual key / gateway config. Expected: the operator's value
    alone (a client header of a configured name is dropped or replaced). (A configured name that is not all
    lower-case happens to be replaced by aiohttp's header merge, whose `added_names` set is case-sensitive; the
    docs' own example, `api-version`, is lower-case, as is every header a client sends through uvicorn.)"""
    up = _HeaderEcho()
    srv = make_gw(config_text=_upstream(up.port, 'headers = { "x-tenant" = "team-a", "api-version" = "2024-10-21" }'))
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    r = _post(srv, srv.api_key, "/chat/completions", body, {"x-tenant": "team-b", "API-Version": "2099-01-01-preview"})
    assert r.status_code == 200, r.text[:200]
    seen = up.seen[-1]
    assert seen["x-tenant"] == ["team-a"], seen["x-tenant"]
    assert seen["api-version"] == ["2024-10-21"], seen["api-version"]


# --- 4. a number only one of keyplane's parsers reads ---------------------------------------------------------

# gpt-4o-mini as PRICED, with a context window (so that input keyplane cannot see is bounded under money controls).
_PRICED_WINDOW = '[prices."gpt-4o-mini"]\ninput = 0\noutput = 1600\ncontext_window = 128000\n'


class _PythonJsonProvider:
    """A provider that reads bodies with Python's json (FastAPI/Starlette's `request.json()`, as vLLM and LiteLLM
    do: `1e400` is infinity there) and writes every answer to its output limit: `n` answers of `max_tokens` each."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

        async def chat(req: web.Request) -> web.StreamResponse:
            body = json.loads(await req.read())
            self.bodies.append(body)
            n = body.get("n") or 1
            out = n * (body.get("max_completion_tokens") or body.get("max_tokens") or 16_384)
            choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}
            return web.json_response(
                {
                    "id": "chatcmpl-r10",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [choice] * n,
                    "usage": {"prompt_tokens": 10, "completion_tokens": out, "total_tokens": 10 + out},
                }
            )

        self.port = _serve({"/v1/chat/completions": chat})


def _n_body(schema_max: str) -> bytes:
    tool = (
        b'{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":'
        b'{"x":{"type":"number","maximum":' + schema_max.encode() + b"}}}}}"
    )
    return (
        b'{"model":"gpt-4o-mini","n":128,"max_tokens":5,"messages":[{"role":"user","content":"hi"}],"tools":['
        + tool
        + b"]}"
    )


def test_a_body_orjson_cannot_read_is_not_quoted_as_one_answer(make_gw):
    """limits/tokens.py measure() reads the body with orjson; a number that overflows a double (`1e400`, e.g. a
    JSON schema's `maximum`) is an orjson error, but not an error to the readers before it (msgspec's parse_head,
    the duplicate check's json.loads, access's inspect) nor to a Python-json upstream. On that error measure()
    returns `Measure(len(body), n=1, unbounded=True)`: the request's `n` (up to 128), its prediction and its
    hosted tools are dropped from the quote; quote_tokens' `_service_tier` (orjson) reads no tier (priority is
    reserved at the standard price), and `with_field` (orjson) cannot write the output limit a request without
    one is reserved at, so it goes out with NO limit. With a context window priced the request passes money
    controls (`unbounded` reserves the window as input). Here n=128 x max_tokens=5 under a 10-cent limit: the same
    body with `maximum: 1e300` is refused 429 (it may cost $1.02, asserted first); with `1e400` it is reserved as
    ONE answer ($0.008), admitted, and the provider bills $1.02 (10x the hard limit, in one request). Expected:
    the body refused (400 invalid_json: no reading keyplane prices may differ from the upstream's), or quoted in
    full."""
    up = _PythonJsonProvider()
    srv = make_gw(config_text=_upstream(up.port, prices=_PRICED_WINDOW))
    pid, key = _project(srv)
    _limit(srv, pid, 10)
    r = _post(srv, key, "/chat/completions", _n_body("1e300"))
    assert r.status_code == 429, r.text[:200]  # the control: 128 answers reserved
    assert up.bodies == []
    r = _post(srv, key, "/chat/completions", _n_body("1e400"))
    assert r.status_code in (400, 429), f"admitted: spent {_spent(srv, pid)[0]} micros of a 100,000 limit"
    assert up.bodies == []


# --- 5. gpt-image streams: partial images -------------------------------------------------------------------

# gpt-image-1 (shipped prices): a low 1024x1024 image is 272 image output tokens at $40 per 1M ($0.011, the table's
# price); "each partial image incurs an additional 100 image output tokens" (OpenAI's image generation guide).
_IMAGE_TOKENS, _PARTIAL_TOKENS = 272, 100


class _ImageStreamer:
    """A provider streaming gpt-image-1 generations as OpenAI does: `partial_images` events, then
    `image_generation.completed` with the call's token usage."""

    def __init__(self) -> None:
        self.calls = 0

        async def generate(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            self.calls += 1
            partials = int(body.get("partial_images") or 0)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            for i in range(partials):
                ev = {"type": "image_generation.partial_image", "b64_json": "AAAA", "partial_image_index": i}
                await resp.write(b"event: image_generation.partial_image\ndata: " + orjson.dumps(ev) + b"\n\n")
            out = _IMAGE_TOKENS + partials * _PARTIAL_TOKENS
            usage = {
                "input_tokens": 5,
                "input_tokens_details": {"text_tokens": 5, "image_tokens": 0},
                "output_tokens": out,
                "total_tokens": 5 + out,
            }
            done = {"type": "image_generation.completed", "b64_json": "AAAA", "usage": usage}
            await resp.write(b"event: image_generation.completed\ndata: " + orjson.dumps(done) + b"\n\n")
            return resp

        self.port = _serve({"/v1/images/generations": generate})


def test_partial_images_of_a_streamed_generation_are_reserved(make_gw):
    """gpt-image generations may stream (`stream: true`) with `partial_images` 1 to 3, each billed as 100 more image
    output tokens. billing/quote_media.py quote_images prices n x the table's per-image price (+ the prompt) and
    reads no `partial_images`; the answer goes out RAW (an SSE stream) and settle bills the flat quote on success.
    A low 1024x1024 image is $0.011 (272 tokens); with 3 partial images the provider bills 572 tokens, $0.0229:
    twice what keyplane reserves and records, on every call (gpt-image-1-mini's low image: $0.005 + $0.0024).
    Under a 2-cent limit the call is admitted and billed $0.011; the provider bills $0.0229. Expected: the partial
    images reserved (and billed) at the model's image output rate, or `partial_images` refused under money
    controls."""
    up = _ImageStreamer()
    srv = make_gw(config_text=_upstream(up.port, prices=""))
    pid, key = _project(srv)
    _limit(srv, pid, 2)
    body = {"model": "gpt-image-1", "prompt": "a cat", "quality": "low", "size": "1024x1024", "stream": True}
    r = _post(srv, key, "/images/generations", {**body, "partial_images": 3})
    billed = 5 * 5 + (_IMAGE_TOKENS + 3 * _PARTIAL_TOKENS) * 40  # micro-dollars: $5 / $40 per 1M
    if r.status_code == 200:
        assert b"image_generation.completed" in r.content
        assert _spent(srv, pid)[0] >= billed, f"billed {_spent(srv, pid)[0]} micros; the provider {billed}"
    else:
        assert r.status_code == 429 and up.calls == 0, r.text[:200]


# --- 6. a client that leaves a reasoning stream once the reasoning is done ----------------------------------------


class _SlowReasoner:
    """A provider streaming a reasoning model's Responses answer as OpenAI does: the reasoning item (its tokens are
    never streamed), then the visible text, slowly; the usage comes with `response.completed` at the end."""

    def __init__(self) -> None:
        async def responses(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            base = {"id": "resp_r10s", "object": "response", "status": "in_progress", "model": body["model"]}
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            await resp.write(_event("response.created", response={**base, "usage": None}, sequence_number=0))
            item = {"type": "reasoning", "id": "rs_1", "summary": []}
            await resp.write(_event("response.output_item.added", output_index=0, item=item, sequence_number=1))
            await resp.write(_event("response.output_text.delta", item_id="msg_1", delta="The", sequence_number=2))
            for i in range(50):  # the answer goes on (the client is gone by then)
                await asyncio.sleep(0.1)
                await resp.write(
                    _event("response.output_text.delta", item_id="msg_1", delta=" x", sequence_number=3 + i)
                )
            usage = {"input_tokens": 10, "output_tokens": _OUTPUT_TOKENS + 51, "total_tokens": _OUTPUT_TOKENS + 61}
            done = {**base, "status": "completed", "usage": usage}
            await resp.write(_event("response.completed", response=done, sequence_number=60))
            return resp

        self.port = _serve({"/v1/responses": responses})


def test_leaving_a_reasoning_stream_bills_the_reasoning(make_gw):
    """(Open when this round began; fixed in the working tree during it: kept as a regression test.)
    A client that disconnects mid-stream is billed "what was generated until then", estimated from the text
    relayed (proxy/handler.py _usage_from_relay: estimate.relayed_tokens of the `delta` strings, docs/proxy.md
    "Streaming"). A reasoning model (o-series, gpt-5 on the Responses API and chat) writes its reasoning tokens
    first and never streams them (at most a summary); they are billed as output tokens. A client that reads the
    first visible delta and closes the connection has had every reasoning token generated (billed by the provider
    up to the cancel) and is billed by keyplane one token. Here 5,000 reasoning tokens ($8.00 at PRICED rates)
    are billed $0.0016, and the rest of the $9.60 reservation is released for the next request: one such request
    after another, a key spends without bound under its hard limit. Expected: a stream cut before its usage is
    billed at least the output it reserved when the model may write output it does not stream (or the upstream
    read on to its usage event)."""
    port = _SlowReasoner().port
    srv = make_gw(config_text=_upstream(port))
    pid, key = _project(srv)
    body = {"model": "gpt-4o-mini", "input": "think hard", "max_output_tokens": 6_000, "stream": True}
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=10) as c, c.stream("POST", srv.v1 + "/responses", json=body, headers=h) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if "output_text.delta" in line:
                break
    deadline = time.monotonic() + 5
    while _spent(srv, pid) == (0, 0) or _spent(srv, pid)[1]:
        assert time.monotonic() < deadline, _spent(srv, pid)
        time.sleep(0.05)
    assert _spent(srv, pid)[0] >= _BILLED, f"billed {_spent(srv, pid)[0]} micros; the provider {_BILLED}"


# --- 7. code interpreter containers: priced by their memory ----------------------------------------------------

# A dated snapshot with its own entry: the shipped-like prices plus a context window (hosted tools need one).
_SNAPSHOT = "gpt-4o-mini-2024-07-18"
_SNAPSHOT_PRICE = f'[prices."{_SNAPSHOT}"]\ninput = 0\noutput = 1600\ncontext_window = 128000\n'
_CONTAINER_64G = 1_920_000  # micro-dollars: OpenAI's price of a 64 GB container session ($1.92; 1 GB: $0.03)


def test_a_large_code_interpreter_container_is_reserved_at_its_price(make_gw, fake):
    """OpenAI prices a code interpreter container session by its memory: 1 GB (the default) $0.03, 4 GB $0.12,
    16 GB $0.48, 64 GB $1.92, chosen by the request (`tools: [{"type": "code_interpreter", "container": {"type":
    "auto", "memory_limit": "64g"}}]`). billing/quote_tools.py prices every `code_interpreter` at the [tools]
    table's one figure ($0.03, the 1 GB price) and reads no `memory_limit`; settle bills each container the answer
    shows at the same $0.03. With `max_tool_calls: 1` under a 10-cent limit the call is reserved $0.038 and
    admitted, and the provider bills $1.92 for its container: 19x the hard limit in one request (64x keyplane's
    figure for each). Expected: a container is reserved (and billed) at the price of its `memory_limit`, or a
    memory limit the table does not price is refused under money controls (cost_not_bounded)."""
    srv = make_gw(_SNAPSHOT_PRICE)
    pid, key = _project(srv)
    _limit(srv, pid, 10)
    tool = {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "64g"}}
    body = {"model": _SNAPSHOT, "input": "run it", "tools": [tool], "max_tool_calls": 1, "max_output_tokens": 5}
    fake.requests.clear()
    r = _post(srv, key, "/responses", body)
    if r.status_code == 200:
        assert _spent(srv, pid)[0] >= _CONTAINER_64G, f"billed {_spent(srv, pid)[0]} micros for a 64 GB container"
    else:
        assert r.status_code in (403, 429) and fake.model_requests() == [], r.text[:200]


def test_held_the_default_container_is_billed_per_session(make_gw, fake):
    """The control: the same call with the default (1 GB) container is billed one session, $0.03, plus its output."""
    srv = make_gw(_SNAPSHOT_PRICE)
    pid, key = _project(srv)
    _limit(srv, pid, 10)
    tool = {"type": "code_interpreter", "container": {"type": "auto"}}
    body = {"model": _SNAPSHOT, "input": "run it", "tools": [tool], "max_tool_calls": 1, "max_output_tokens": 5}
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 200, r.text[:200]
    assert _spent(srv, pid)[0] == 30_000 + 5 * 1600


# --- 8. an image call that names no model --------------------------------------------------------------------


def test_an_image_call_naming_no_model_is_priced_as_the_model_that_runs_it(make_gw, fake):
    """The Images API's `model` "defaults to `dall-e-2` unless a parameter specific to the GPT image models is used"
    (OpenAI's API reference; keyplane.access.policy says the same, and refuses such a call under model
    permissions). billing/quote_media.py quote_images prices a call without `model` as dall-e-2 whatever it asks:
    `quality: "high"`, `size: "1536x1024"`, `output_format`, `background`... (parameters only the GPT image models
    take, so the provider runs one of them) find no dall-e-2 price, and the dearest dall-e-2 image ($0.02) is taken.
    Ten high 1536x1024 images are reserved and billed $0.20 under a $1 limit; gpt-image-1 bills $2.50 for them
    (12x, per call), and the call counts against dall-e-2's rate limits, not the GPT image model's. Expected: such a
    call priced as the GPT image model the provider picks (here: refused, 429), or refused under money controls
    until it names its model."""
    srv = make_gw()
    pid, key = _project(srv)
    _limit(srv, pid, 100)
    body = {"prompt": "a cat", "n": 10, "quality": "high", "size": "1536x1024", "output_format": "png"}
    fake.requests.clear()
    r = _post(srv, key, "/images/generations", body)
    if r.status_code == 200:
        assert _spent(srv, pid)[0] >= 2_500_000, f"billed {_spent(srv, pid)[0]} micros; gpt-image-1 bills $2.50"
    else:
        assert r.status_code in (400, 403, 429) and fake.model_requests() == [], r.text[:200]


# --- 9. a request that outlives its reservation ----------------------------------------------------------------


class _SlowChat:
    """A provider answering chat completions: a stream takes `delay` seconds before its last chunk (a long
    reasoning call, or a client that reads slowly), a plain call answers at once; both write 5 output tokens."""

    def __init__(self, delay: float) -> None:
        usage = {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            choice = {"index": 0, "message": {"role": "assistant", "content": "a b c d e"}, "finish_reason": "stop"}
            if not body.get("stream"):
                return web.json_response(
                    {
                        "id": "chatcmpl-f",
                        "object": "chat.completion",
                        "choices": [choice],
                        "model": body["model"],
                        "usage": usage,
                    }
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            first = {
                "id": "chatcmpl-s",
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
            }
            await resp.write(b"data: " + orjson.dumps(first) + b"\n\n")
            await asyncio.sleep(delay)
            last = {**first, "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n")
            return resp

        self.port = _serve({"/v1/chat/completions": chat})


def test_a_request_running_past_the_reservation_ttl_keeps_its_budget_held(make_gw):
    """Admission reserves for `reservation_ttl_seconds` (900 s by default; "keep it above the longest request"), and
    billing's background step sweeps lapsed reservations every second (limits/memory.py sweep; Redis drops them
    on the next admission). Nothing bounds how long an HTTP request runs: a slow reasoning call (o3-pro, deep
    research), or a client that reads its stream slowly, holds it open for as long as it likes. Once the TTL passes
    its reservation is dropped while the upstream still generates; the budget looks free, the next requests are
    admitted against it, and each is billed in full at settle. (The Realtime relay closes this: a response not done
    by 0.8 x TTL ends its session and is settled at what it reserved, wk49; HTTP streams have no such bound.)
    Here the TTL is 2 s and the limit holds one request (0.8 cents of 1): a stream still running after ~3 s no
    longer holds its 0.8 cents, a second request is admitted, and both are billed: 1.6 cents spent of a 1-cent
    hard limit. N streams held open past the TTL double the limit, again and again. Expected: a request's
    reservation held until it is settled (refreshed while it runs), or the request cut and settled at what it
    reserved before its reservation lapses; the second request refused (429)."""
    up = _SlowChat(delay=6.0)
    srv = make_gw(config_text=_upstream(up.port), KEYPLANE_RESERVATION_TTL_SECONDS="2")
    pid, key = _project(srv)
    _limit(srv, pid, 1)
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    out: dict[str, httpx.Response] = {}

    def long_stream() -> None:
        out["first"] = _post(srv, key, "/chat/completions", {**body, "stream": True})

    t = threading.Thread(target=long_stream)
    t.start()
    deadline = time.monotonic() + 5
    while _spent(srv, pid)[1] == 0:  # reserved...
        assert time.monotonic() < deadline, _spent(srv, pid)
        time.sleep(0.05)
    swept_by = time.monotonic() + 3.5  # the TTL (2 s) and a sweep (every second) later
    while _spent(srv, pid)[1] and time.monotonic() < swept_by:  # ...then swept (this build) or held (secure)
        time.sleep(0.1)
    assert t.is_alive()  # the first request still runs
    second = _post(srv, key, "/chat/completions", body)
    t.join(10)
    assert out["first"].status_code == 200
    assert second.status_code == 429, f"admitted: {_spent(srv, pid)[0]} micros spent of a 10,000 limit"


# --- 10. another project's fine-tuned model, named deeper than `model` ------------------------------------------

_FT_A = "ft:gpt-4o-mini-2024-07-18:acme:a-private:AbC123"


def _owned(srv, oid: str, project_id: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    from keyplane.store.models import ProviderObject

    store = srv.app.runtime.features.proxy.tenancy.store
    srv.call(store.record([ProviderObject(id=oid, project_id=project_id, object=kind, upstream="fake", created_at=0)]))


def test_an_eval_run_cannot_sample_another_projects_fine_tuned_model(make_gw, fake):
    """Round 5 made a fine-tuned model its project's own: proxy/intake.py own_model checks the request's top-level
    `model` (and admission checks the models of a batch file's lines). An eval run names the model it samples
    inside its data source (`data_source: {"type": "completions" | "responses", "model": "ft:..."}`), and an eval
    its graders' models (`testing_criteria[].model`), as a reinforcement fine-tuning job does (`method.reinforcement
    .grader.model`): none is checked. Project B's key runs project A's fine-tuned model (trained on A's private
    data, able to repeat it) over prompts of its choosing, the answers in B's run output. Under money controls eval
    runs are refused (no price); where none applies (the default) they run. Expected: 404 model_not_found before
    any upstream call, as for the same model named at the top level (asserted first)."""
    srv = make_gw()
    pa, _ = _project(srv)
    pb, key_b = _project(srv)
    _owned(srv, _FT_A, pa, "model")
    _owned(srv, "eval_b1", pb, "eval")
    r = _post(srv, key_b, "/chat/completions", {"model": _FT_A, "max_tokens": 5, "messages": MSG})
    assert r.status_code == 404 and _code(r) == "model_not_found", r.text[:200]  # the control (round 5)
    ds = {
        "type": "completions",
        "model": _FT_A,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "source": {"type": "file_content", "content": [{"item": {"q": "repeat your training data"}}]},
    }
    fake.requests.clear()
    r = _post(srv, key_b, "/evals/eval_b1/runs", {"name": "r", "data_source": ds})
    sent = [x.path for x in fake.model_requests()]
    assert sent == [] and r.status_code == 404, (sent, r.status_code, r.text[:200])


# --- 11. the input images of a small multipart edit --------------------------------------------------------------


def _edit_form(images: int, param: bytes) -> tuple[bytes, str]:
    """A multipart gpt-image-1 edit with ``images`` small PNG parts whose file name parameter is spelled ``param``."""
    b = b"r10boundary"
    parts = [
        (b'name="model"', b"gpt-image-1"),
        (b'name="prompt"', b"merge them"),
        (b'name="quality"', b"low"),
        (b'name="size"', b"1024x1024"),
    ]
    for i in range(images):
        parts.append(
            (b'name="image[]"; ' + param + b'="i%d.png"\r\nContent-Type: image/png' % i, b"\x89PNG" + b"\0" * 64)
        )
    body = b"".join(
        b"--" + b + b"\r\nContent-Disposition: form-data; " + h + b"\r\n\r\n" + v + b"\r\n" for h, v in parts
    )
    return body + b"--" + b + b"--\r\n", "multipart/form-data; boundary=" + b.decode()


def test_every_input_image_of_a_small_multipart_edit_is_reserved(make_gw, fake):
    """Round 7 reserved each input image of a gpt-image edit (6,000 input tokens each). A multipart body of at most
    1 MiB is read whole, and billing/quote.py counts its images as `body.count(b"filename=")`, a case-sensitive
    byte count, while proxy/multipart.py (and every multipart parser: RFC 7578/2183 parameter names are
    case-insensitive) reads `FILENAME="a.png"` as a file part. Sixteen image parts spelled `FILENAME=` are reserved
    as ONE input image: $0.041 instead of $0.491 under a 10-cent limit, and admitted (the same sixteen spelled
    `filename=` are refused, asserted first). The provider bills every input image (at its image input rate, far
    more than 6,000 tokens' worth each with `input_fidelity: high`). Expected: the image count read from the parsed
    parts (as the streamed and spooled paths do), and the call refused (429)."""
    srv = make_gw()
    pid, key = _project(srv)
    _limit(srv, pid, 10)
    fake.requests.clear()
    for param, want in ((b"filename", 429), (b"FILENAME", 429)):
        body, ctype = _edit_form(16, param)
        r = httpx.post(
            srv.v1 + "/images/edits",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": ctype},
            timeout=30,
        )
        assert r.status_code == want, (param, r.status_code, r.text[:200])
    assert fake.model_requests() == []


# --- 12. a client that leaves a non-streamed call ----------------------------------------------------------------


class _SlowAnswer:
    """A provider that takes 3 s to write a 5,000-token chat answer (a long generation or a reasoning model), then
    answers it whole (not streamed)."""

    def __init__(self) -> None:
        self.received = 0

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            self.received += 1
            await asyncio.sleep(3)
            choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 5, "completion_tokens": _OUTPUT_TOKENS, "total_tokens": 5 + _OUTPUT_TOKENS}
            return web.json_response(
                {
                    "id": "chatcmpl-l",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [choice],
                    "usage": usage,
                }
            )

        self.port = _serve({"/v1/chat/completions": chat})


def test_leaving_a_non_streamed_call_bills_what_it_may_have_generated(make_gw):
    """(Open when this round began; fixed in the working tree during it: kept as a regression test.)
     "If the client disconnects, the upstream call is cancelled ... Non-streaming requests are cancelled the same
    way (settled with status 499)" (docs/proxy.md). proxy/handler.py _usage_from_relay(ctx, None) then estimates
    the prompt from the body and the output as 0 (`relay is None`): nothing was relayed to count. But the provider
    received the call and generated until the cancel reached it (a non-streamed call is not even cut by it at
    some providers): reasoning and answer tokens, billed. A client that sends `max_tokens: 6000` calls and closes
    each one just before its answer is billed $0 of output by keyplane; the reservation ($9.60 here) is released
    for the next one, while the provider bills what each generated ($8.00 here). Expected: a model call cut after
    the provider received it, with no usage to read, billed at the output it reserved (as an upload the provider
    received whole is billed at its price)."""
    up = _SlowAnswer()
    srv = make_gw(config_text=_upstream(up.port))
    pid, key = _project(srv)
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 6_000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=1.5)
    deadline = time.monotonic() + 5
    while _spent(srv, pid)[1] or up.received == 0:
        assert time.monotonic() < deadline, _spent(srv, pid)
        time.sleep(0.05)
    assert _spent(srv, pid)[0] >= _BILLED, f"billed {_spent(srv, pid)[0]} micros; the provider {_BILLED}"


# --- 13. a stored prompt's hosted tools that keyplane does not price ---------------------------------------------

# gpt-image-1 through the Responses image_generation tool: a high 1024x1024 image, 4,160 image output tokens at
# $40 per 1M (OpenAI's image generation guide): what the provider bills for each call, past the model's tokens.
_IMAGE_CALL = 4_160 * 40


class _PromptedImages:
    """A provider running a stored prompt that enables the image_generation tool (the request's body does not show
    it): its answer holds one `image_generation_call` per allowed tool call."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

        async def responses(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            self.bodies.append(body)
            calls = [
                {"type": "image_generation_call", "id": f"ig_{i}", "status": "completed", "result": "AAAA"}
                for i in range(int(body.get("max_tool_calls") or 1))
            ]
            usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
            return web.json_response(
                {
                    "id": "resp_p",
                    "object": "response",
                    "status": "completed",
                    "model": body["model"],
                    "output": calls,
                    "usage": usage,
                }
            )

        self.port = _serve({"/v1/responses": responses})


def test_a_stored_prompts_unpriced_tools_are_not_run_unbilled(make_gw):
    """A request naming the image_generation (or mcp, computer_use...) tool in its body is refused under money
    controls: "Other hosted tools (image generation, MCP, computer use, shell...) ... cannot be bounded". A stored
    prompt (`prompt: {"id": ...}`) may enable any of them, which the body does not show; billing/quote_tools.py
    reserves its calls "at the dearest per-call price of each kind" of the PRICED tools only (web search, file
    search, code interpreter: $0.03 at most), and settle bills only `web_search_call`, `file_search_call` and
    `code_interpreter_call` items (proxy/usage.py _TOOL_ITEMS): an `image_generation_call` is billed nothing. Two
    calls are reserved $0.06 (+ tokens) under a 20-cent limit and admitted; the provider bills two gpt-image images
    ($0.33 for high 1024x1024 ones), keyplane records $0.008. Expected: a stored prompt refused under money controls
    while the table cannot price every hosted tool it may enable (or each call reserved and billed at the dearest
    hosted tool the provider bills), and the image_generation calls an answer shows billed."""
    up = _PromptedImages()
    srv = make_gw(config_text=_upstream(up.port, prices=_PRICED_WINDOW))
    pid, key = _project(srv)
    _limit(srv, pid, 20)
    control = {"model": "gpt-4o-mini", "input": "draw", "tools": [{"type": "image_generation"}], "max_output_tokens": 5}
    r = _post(srv, key, "/responses", control)
    assert r.status_code == 403 and _code(r) == "cost_not_bounded", r.text[:200]  # named in the body: refused
    _owned(srv, "pmpt_draws", pid, "prompt")  # the project's own stored prompt (round 10: prompts are owned)
    body = {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_draws"}, "max_tool_calls": 2, "max_output_tokens": 5}
    r = _post(srv, key, "/responses", body)
    if r.status_code == 200:
        assert _spent(srv, pid)[0] >= 2 * _IMAGE_CALL, f"billed {_spent(srv, pid)[0]} micros for 2 image calls"
    else:
        assert r.status_code in (403, 429) and up.bodies == [], r.text[:200]


def test_a_stored_prompts_image_calls_are_billed(make_gw):
    """The same stored prompt under a limit with room for keyplane's bound (each unseen call reserved at the dearest
    hosted tool): served, and each `image_generation_call` of the answer billed at the dearest image of the tool's
    default model (gpt-image-1 high 1536x1024, $0.25) with the most partial images it may stream (3 x 100 image
    output tokens, $0.012): an upper bound (round 11); the item's quality and size are not read; metered as
    images."""
    up = _PromptedImages()
    srv = make_gw(config_text=_upstream(up.port, prices=_PRICED_WINDOW))
    pid, key = _project(srv)
    _limit(srv, pid, 2000)
    _owned(srv, "pmpt_draws", pid, "prompt")
    body = {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_draws"}, "max_tool_calls": 2, "max_output_tokens": 5}
    r = _post(srv, key, "/responses", body)
    assert r.status_code == 200, r.text[:200]
    assert up.bodies[-1]["max_tool_calls"] == 2
    deadline = time.monotonic() + 5
    while _spent(srv, pid)[1]:
        assert time.monotonic() < deadline, _spent(srv, pid)
        time.sleep(0.05)
    assert _spent(srv, pid)[0] == 2 * 262_000 + 5 * 1600, _spent(srv, pid)  # $0.25 + 3 partial images each


# --- 14. an upstream's usage that no provider bills ---------------------------------------------------------------


class _OddUsage:
    """A provider (a local server, a proxy in front of one, a buggy or compromised one) whose answers report the
    usage queued in ``usages``."""

    def __init__(self) -> None:
        self.usages: list[dict] = []

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
            answer = {"id": "chatcmpl-u", "object": "chat.completion", "model": body["model"], "choices": [choice]}
            return web.json_response({**answer, "usage": self.usages.pop(0)})

        self.port = _serve({"/v1/chat/completions": chat})


def test_a_negative_usage_never_lowers_what_was_spent(make_gw):
    """billing/settle.py prices the usage the answer reports as it is: Price.cost clamps `cached` to [0, prompt]
    but not `prompt` nor `completion`, so `completion_tokens: -6000` is a cost of -$9.60, and the limiter commits it
    (limits/memory.py settle_now: `c[0] += actual_cost`), lowering the month's spend of the key, project and
    organization (and the credit used) below what was really spent: the budget is handed back and later requests
    pass a limit already reached. An upstream is not the attacker, but one answering nonsense (a local server's
    bug, a proxy in front of it) must not be able to refund a budget. Expected: each count of a usage clamped at 0
    (a request never costs less than nothing; here: the project's spend stays at the first call's $0.008)."""
    up = _OddUsage()
    up.usages = [
        {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
        {"prompt_tokens": 1, "completion_tokens": -6_000, "total_tokens": -5_999},
    ]
    srv = make_gw(config_text=_upstream(up.port))
    pid, key = _project(srv)
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    assert _post(srv, key, "/chat/completions", body).status_code == 200
    assert _spent(srv, pid)[0] == 5 * 1600
    assert _post(srv, key, "/chat/completions", body).status_code == 200
    assert _spent(srv, pid)[0] >= 5 * 1600, _spent(srv, pid)


# --- held ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/organization/projects"),
        ("POST", "/organization/credit_grants"),
        ("GET", "/organization/spend_limit"),
        ("GET", "/%6Frganization/projects"),
        ("GET", "/projects/proj_x/roles"),
    ],
)
def test_held_a_project_key_reaches_no_admin_route(make_gw, fake, method, path):
    """The admin API (and the SDK's project-scoped role calls) refuse a project key, however the path is spelled."""
    srv = make_gw()
    _, key = _project(srv)
    r = httpx.request(method, srv.v1 + path, headers={"Authorization": f"Bearer {key}"}, json=None, timeout=10)
    assert r.status_code in (400, 401, 403, 404), (path, r.status_code, r.text[:200])
    assert fake.model_requests() == []


def test_an_image_call_naming_no_model_is_recorded_as_the_model_billed(make_gw, fake):
    """The usage record (and the Usage API's model grouping) of a call naming no model shows the model it was
    priced as, the one the provider runs: here gpt-image-1 (a parameter only the GPT image models take)."""
    srv = make_gw()
    pid, key = _project(srv)
    r = _post(srv, key, "/images/generations", {"prompt": "a cat", "quality": "high", "size": "1536x1024"})
    assert r.status_code == 200, r.text[:200]
    url = srv.v1 + "/organization/usage/requests"
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(url, headers={"Authorization": f"Bearer {srv.admin_key}"}).json()["data"]
        images = [x for x in got if x.get("endpoint") == "/v1/images/generations" and x.get("project_id") == pid]
        if images or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [x["model"] for x in images] == ["gpt-image-1"], images
