"""Week 50 red-team review, round 15: a holder of a valid project key against what landed up to round 14 (the
HTTP/1.1 upstream client, the authority patrol, items by id, owners, the token estimator, the quotes), and the
OpenAI-compatible upstreams keyplane says it fronts (vLLM, Ollama, llama.cpp). Each test states the secure
behaviour and failed on the code as this round found it; each passes with its fix: 1 (a chat stream billed its first
usage of many, vLLM's continuous usage stats), 2 (a body still arriving when its key is revoked or narrowed:
proxy/intake.py looks at the key again once the request is read) and 3 (numbers and schema structure the token
estimator did not count) (tests/redteam/conftest.py: a gateway on stand-in upstreams, in-process limiter)."""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from keyplane.limits import encodings
from tests.billing.conftest import PRICED
from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_routes
from tests.redteam.test_wk49_round4 import _project, _spent
from tests.redteam.test_wk50_round10 import _post
from tests.redteam.test_wk50_round11 import _settled
from tests.redteam.test_wk50_round13 import _INPUT_PRICED, _upstream

# --- 1. a stream that reports its usage in every chunk -------------------------------------------------------------

_WORDS = 400  # output tokens the stand-in writes, one per chunk


def _continuous_usage_server() -> int:
    """A vLLM (or SGLang) server asked for `stream_options.continuous_usage_stats`: every chunk of a chat stream
    carries the usage so far (completion_tokens growing by one per chunk), then a usage-only chunk with the
    whole request's usage, then [DONE]."""

    async def chat(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        base = {"id": "chatcmpl-r15", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        for i in range(1, _WORDS + 1):
            choice = {"index": 0, "delta": {"content": "w "}, "finish_reason": None}
            usage = {"prompt_tokens": 5, "completion_tokens": i, "total_tokens": 5 + i}
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [choice], "usage": usage}) + b"\n\n")
        usage = {"prompt_tokens": 5, "completion_tokens": _WORDS, "total_tokens": 5 + _WORDS}
        await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return serve_routes({"/v1/chat/completions": chat})


def test_a_stream_reporting_usage_in_every_chunk_is_billed_its_final_usage(make_gw):
    """DESIGN.md names vLLM among the servers keyplane fronts. vLLM (and SGLang) take `stream_options:
    {"include_usage": true, "continuous_usage_stats": true}` and then put the usage so far in EVERY chunk of a chat
    stream, the whole request's in the last. proxy/sse.py StreamRelay._inspect parses the first event holding
    `"usage":{` and from then on returns every chunk unread (`if self.usage is not None: return out`): the stream
    is billed the usage of its FIRST chunk, one completion token, whatever it wrote. A key holder adds the one
    field to each request and pays for a token per answer: 400 tokens written here, 1 billed; with max_tokens
    in the thousands, a hard spend limit is passed by that factor, one request after another (the reservation
    is released at settle). Expected: billed the last usage the stream reported (400 output tokens at $1600 per
    1M = 640,000 micro-dollars)."""
    port = _continuous_usage_server()
    srv = make_gw(config_text=_upstream(port, prices=PRICED))
    pid, key = _project(srv)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 1000,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    r = _post(srv, key, "/chat/completions", body)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
    spent = _settled(srv, pid)
    assert spent == _WORDS * 1600, f"billed {spent} micro-dollars for {_WORDS} output tokens"


# --- 2. a request whose body is still coming when its key is revoked ----------------------------------------------


def _slow_post(  # type: ignore[no-untyped-def]
    srv,
    key: str,
    path: str,
    body: bytes,
    between,
    content_type: str = "application/json",
    first: int | None = None,
    settle: float = 0.3,
) -> tuple[int, bytes]:
    """POST ``body`` on a raw socket: the head and ``first`` bytes of the body (half of it by default), ``settle``
    seconds for the gateway to take them, then ``between()`` (run in a thread), then the rest 1.5 s later; the
    answer's status and body."""
    u = urlsplit(srv.base_url)
    cut = len(body) // 2 if first is None else first

    async def go() -> tuple[int, bytes]:
        r, w = await asyncio.open_connection(u.hostname, u.port)
        head = (
            f"POST /v1{path} HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        w.write(head + body[:cut])
        await w.drain()
        await asyncio.sleep(settle)  # authenticated; the body is being read
        await asyncio.to_thread(between)
        await asyncio.sleep(1.5)  # every instance knows: "refused within one second"
        w.write(body[cut:])
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 30)
        w.close()
        status = int(answer.split(b" ", 2)[1])
        return status, answer.split(b"\r\n\r\n", 1)[-1]

    return asyncio.run(go())


def test_a_request_whose_body_arrives_after_its_key_is_revoked_never_reaches_the_upstream(make_gw, fake):
    """DESIGN.md rule 1: "A revoked key is refused by every instance within one second", and docs/proxy.md: "A
    request in flight is cut as soon as its key is revoked". proxy/intake.py authenticates a request from its head,
    then reads its body (request.read_body: as long as the client takes, no deadline), then admits and forwards it
    with the KeyEntry it found at the start: nothing looks at the key again until proxy/authority.py's Patrol, which
    starts watching once the call is already on its way upstream (and first looks up to 0.5 s later: a fast answer
    is whole by then). A key holder expecting a revocation (a leaked key the scanner found, a departing employee's,
    a runaway key the kill switch suspends) opens connections with the head and part of a body each and holds
    them; after the revocation it finishes them one by one, each served as the key it no longer is: a chat call,
    a batch or a fine-tuning job started (which then runs for hours), a file read through a search. Here: the key is
    revoked while the body is half sent, the rest sent 1.5 s later. Expected: 401 (the revoked key's refusal) and
    no upstream call."""
    pid, _ = _project(srv := make_gw())
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon revoked"})
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 5}
    )
    fake.requests.clear()
    status, answer = _slow_post(
        srv, k["value"], "/chat/completions", body, lambda: admin(srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}")
    )
    assert status == 401, (status, answer[:300])
    assert fake.model_requests() == []


def test_a_request_whose_key_loses_the_scope_while_its_body_arrives_is_held_to_the_key_as_it_is_now(make_gw, fake):
    """The same slow body, the key narrowed to read-only instead of revoked: the request is held to the key as it is
    when it goes upstream (403, the model scope missing), not as it was when its head came in."""
    pid, _ = _project(srv := make_gw())
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon narrowed"})
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 5}
    )
    fake.requests.clear()
    status, answer = _slow_post(
        srv,
        k["value"],
        "/chat/completions",
        body,
        lambda: admin(srv, "POST", f"/projects/{pid}/api_keys/{k['id']}", {"permissions": "read_only"}),
    )
    assert status == 403 and b"model.request" in answer, (status, answer[:300])
    assert fake.model_requests() == []


# --- 3. numbers the model reads -------------------------------------------------------------------------------------

# A tool whose parameter takes one of these values: each a 19-digit integer, seven tokens of text to o200k_base.
_CODES = [1_000_000_000_000_000_000 + 7_919 * i for i in range(2_000)]
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "route",
            "parameters": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "enum": _CODES},
                    "weight": {"type": "number", "minimum": 0.000123456789012345, "maximum": 98765.43210987654},
                },
            },
        },
    }
]


def _reserved_and_billed(srv, key: str, pid: str, body: dict) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(micro-dollars reserved while the call ran, micro-dollars it was billed) of one chat completion answered 200
    by a stand-in that holds the answer long enough (1.5 s) for the reservation to be read."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(_post(srv, key, "/chat/completions", body).status_code))
    t.start()
    reserved = 0
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline and not reserved:
        reserved = _spent(srv, pid)[1]
        time.sleep(0.05)
    t.join()
    assert seen == [200]
    return reserved, _settled(srv, pid)


def test_the_numbers_of_a_tool_schema_are_reserved_at_their_tokens(make_gw):
    """docs/limits-and-billing.md: "Prompt tokens are an upper bound of what the body holds. Every string in the
    request is counted with the model's tokenizer, whatever field it sits in"; a function tool's schema is
    rendered into the prompt the provider bills, its `enum` values, `minimum`, `maximum`, `default` included.
    limits/tokens.py counts a JSON number as one token, and a list of integers anywhere as token ids (its
    length): an `enum` of 2,000 nineteen-digit codes counts 2,000 tokens where their text is 14,000. A body of
    such numbers reserves about a seventh of the input it is billed, up to the context window (gpt-4.1's
    million tokens: ~$1.70 under-reserved per call), and calls sent together pass a hard limit by that much each.
    The stand-in provider bills the o200k tokens of the tools' JSON text (less than the prompt it renders).
    Expected: what admission reserves (read while the call runs) covers what the call is billed."""
    encodings.load(("o200k_base",))
    billed_prompt = len(encodings.get("o200k_base").encode_ordinary(orjson.dumps(_TOOLS).decode()))

    async def chat(req: web.Request) -> web.StreamResponse:
        await req.read()
        await asyncio.sleep(1.5)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": billed_prompt, "completion_tokens": 5, "total_tokens": billed_prompt + 5}
        return web.json_response(
            {"id": "chatcmpl-r15n", "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    srv = make_gw(config_text=_upstream(serve_routes({"/v1/chat/completions": chat}), prices=_INPUT_PRICED))
    pid, key = _project(srv)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}], "tools": _TOOLS, "max_tokens": 5}
    reserved, billed = _reserved_and_billed(srv, key, pid, body)
    assert billed >= billed_prompt * 16, billed  # the stand-in's usage was billed
    assert reserved >= billed, f"reserved {reserved} micro-dollars for a call billed {billed}"
