"""Week 50 red-team review, round 14: the changes of round 13 (the authority patrol's cut settled at the unseen
input admission reserved, items by id, audio answers owned, keyplane's HTTP/1.1 upstream client). Each test states
the secure behaviour and is marked xfail (strict) while the hole is open (tests/redteam/conftest.py: a gateway on
stand-in upstreams, in-process limiter)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_routes
from tests.redteam.test_wk49_round4 import _project
from tests.redteam.test_wk50_round10 import _code, _post
from tests.redteam.test_wk50_round11 import _settled
from tests.redteam.test_wk50_round12 import _owned
from tests.redteam.test_wk50_round13 import _INPUT_PRICED, _upstream

_CONTEXT = 128_000


# --- 1. an item named by id the token counter does not see as a reference -----------------------------------------

# Input that is only an id: proxy/object_refs.py holds each to its owner (the provider reads it from what it stored),
# but limits/tokens.py only marks `item_reference`, the _UNSEEN_TYPES and items.by_id's known types as unseen input;
# an untyped item (`{"id": ...}`), a null type, an unknown type reduced to its id, and a chat message's previous
# audio answer (`"audio": {"id": ...}`) reserve no unseen input.
_BY_ID = {
    "untyped item": ("/responses", "item", {"input": [{"id": "msg_r14_own_long"}]}),
    "null type": ("/responses", "item", {"input": [{"type": None, "id": "msg_r14_own_long"}]}),
    "unknown type": ("/responses", "item", {"input": [{"type": "tool_search_call", "id": "msg_r14_own_long"}]}),
    "audio answer": (
        "/chat/completions",
        "audio",
        {
            "messages": [
                {"role": "user", "content": "go on"},
                {"role": "assistant", "audio": {"id": "msg_r14_own_long"}},
            ]
        },
    ),
}


def _slow_provider() -> tuple[int, list[bytes]]:
    """A provider that takes a call (its body kept in the list) and answers a 500 only after 6 s: long enough for
    a cut while it waits."""
    received: list[bytes] = []

    async def slow(req: web.Request) -> web.StreamResponse:
        received.append(await req.read())
        await asyncio.sleep(6)
        return web.json_response({"error": {"message": "late", "type": "server_error"}}, status=500)

    return serve_routes({("POST", "/v1/responses"): slow, ("POST", "/v1/chat/completions"): slow}), received


@pytest.mark.parametrize("shape", list(_BY_ID))
def test_a_cut_call_naming_a_stored_item_by_any_shape_is_billed_the_unseen_input(make_gw, shape):
    """The provider reads an item given only by its id (object_refs.py reports each of these as a reference and
    holds it to its owner: the project's own item passes) from what it stored, and bills its tokens as input as soon
    as it takes the call. limits/tokens.py _walk sets `unbounded` only for `item_reference`, the _UNSEEN_TYPES and
    a typed items.by_id node: an untyped `{"id": ...}` (items.bare: the API reads it as a reference), `"type":
    null`, an unknown type reduced to its id, and chat's `{"role": "assistant", "audio": {"id": ...}}` reserve 0
    unseen input. Admission then reserves a few tokens; many such calls at once pass a hard limit each costing up
    to the context window, and one cut while it waits (a revocation here; a client leaving is the same branch) is
    billed at prompt_tokens(body) (estimate.reserved_unseen_input is 0). Expected: billed at least the context
    window's input ($16 per 1M x 128k = $2.05), as for an item_reference (round 13's test)."""
    path, kind, extra = _BY_ID[shape]
    port, received = _slow_provider()
    srv = make_gw(config_text=_upstream(port, prices=_INPUT_PRICED))
    pid, _ = _project(srv)
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon revoked"})
    _owned(srv, "msg_r14_own_long", pid, kind)
    body = {"model": "gpt-4o-mini", "max_tokens" if path.startswith("/chat") else "max_output_tokens": 5, **extra}

    async def go() -> int:
        async def revoke() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(admin, srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}")

        task = asyncio.ensure_future(revoke())
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(srv.v1 + path, json=body, headers={"Authorization": f"Bearer {k['value']}"})
        await task
        return r.status_code

    status = asyncio.run(go())
    assert received and status in (401, 403), status  # the provider took it; the call was cut
    spent = _settled(srv, pid)
    assert spent >= 1_000_000, spent  # micro-dollars


# --- 2. a second owner written over the first in the process cache -------------------------------------------------


def test_an_id_already_owned_keeps_its_first_owner_on_an_instance_that_had_not_cached_it(make_gw):
    """OwnerStore.record: "An id already owned keeps its first owner." It filters only on the process cache
    (`r.id not in self.cache`) and then _remember()s the new row in the cache before the INSERT ... ON CONFLICT DO
    NOTHING: on an instance that has not cached the id (any other instance of a fleet, this one after a restart or
    after the cache's 200,000 entries rolled over), SQL keeps project A but this process now says project B, and B's
    requests naming the id pass here until the entry is dropped. Any answer to B that shows the id makes the record:
    the input items of B's own response (`GET /v1/responses/{id}/input_items` records every item id it lists as
    B's: a replay of A's item with its content names nothing and passes, and keeps its id), a conversation's items,
    a chat answer's audio id from a lenient or hostile upstream. Modelled here: A's item recorded, the process
    cache cleared (a restart; another instance on the same store), B's response listing an input item with A's id,
    then B's item_reference to it. Expected: 404 object_not_found (it is A's in the store)."""
    seen: list[str] = []

    async def input_items(req: web.Request) -> web.StreamResponse:
        seen.append(req.path)
        item = {"type": "message", "id": "msg_r14_team_a", "role": "user", "content": [{"type": "input_text"}]}
        return web.json_response({"object": "list", "data": [item], "has_more": False})

    async def responses(req: web.Request) -> web.StreamResponse:
        seen.append(req.path)
        usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
        return web.json_response(
            {"id": "resp_r14_b", "object": "response", "status": "completed", "output": [], "usage": usage}
        )

    port = serve_routes(
        {("GET", "/v1/responses/resp_r14_b/input_items"): input_items, ("POST", "/v1/responses"): responses}
    )
    srv = make_gw(config_text=_upstream(port))
    pa, _ = _project(srv)
    pb, key_b = _project(srv)
    _owned(srv, "msg_r14_team_a", pa, "item")
    _owned(srv, "resp_r14_b", pb, "response")
    store = srv.app.runtime.features.proxy.tenancy.store
    ref = {
        "model": "gpt-4o-mini",
        "max_output_tokens": 5,
        "input": [{"type": "item_reference", "id": "msg_r14_team_a"}],
    }
    r = _post(srv, key_b, "/responses", ref)
    assert r.status_code == 404, r.text[:200]  # the control: A's item, refused
    store.cache.clear()  # a restart, or another instance of the fleet on the same store
    store.misses.clear()
    r = httpx.get(srv.v1 + "/responses/resp_r14_b/input_items", headers={"Authorization": f"Bearer {key_b}"})
    assert r.status_code == 200, r.text[:200]
    r = _post(srv, key_b, "/responses", ref)
    assert r.status_code == 404 and _code(r) == "object_not_found", (r.status_code, r.text[:200])


# --- 3. a call the client leaves is billed the input its body shows as text only -----------------------------------

_WORDS = " ".join(f"w{i}" for i in range(40_000))  # ~80k tokens of inline text
_IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
_INLINE = {
    "function_call_output": (
        "/responses",
        {"input": [{"type": "function_call_output", "call_id": "call_1", "output": _WORDS}], "max_output_tokens": 5},
    ),
    "tool schema": (
        "/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": _WORDS, "parameters": {}}}],
            "max_tokens": 5,
        },
    ),
    "images": (
        "/chat/completions",
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}] + [_IMAGE] * 4}],
            "max_tokens": 5,
        },
    ),
}


@pytest.mark.parametrize("shape", list(_INLINE))
def test_a_call_the_client_leaves_is_billed_the_input_admission_measured(make_gw, shape):
    """A call cut before its usage (the client leaving: authority.Watch; a revocation: the Patrol) is billed by
    estimate.usage_from_relay: output at what was reserved, input at max(prompt_tokens(ctx.body),
    reserved_unseen_input). prompt_tokens reads only `instructions`, message `content` and `prompt`/`input` through
    flatten(), which keeps `text`/`content`/`input_text` keys: a function_call_output's `output`, tool and
    response-format schemas, images (reserved at up to 48,169 tokens each for gpt-4o-mini), and every other part
    admission counted (limits/tokens.py, res.extra["prompt"]) are billed 0. The provider bills the whole input as
    soon as it takes the call. A key holder sends ~80k tokens of input (or four images) with max_tokens 5, leaves
    after a second, and repeats: keyplane bills a few output tokens per call while the provider bills the input,
    unbounded by any hard limit. Expected: the input billed at least at what admission measured (here >= 40k
    tokens at $16 per 1M: 640,000 micro-dollars)."""
    path, extra = _INLINE[shape]
    port, received = _slow_provider()
    srv = make_gw(config_text=_upstream(port, prices=_INPUT_PRICED))
    pid, key = _project(srv)
    body = {"model": "gpt-4o-mini", **extra}

    async def go() -> str:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=1.5)) as c:
                r = await c.post(srv.v1 + path, json=body, headers={"Authorization": f"Bearer {key}"})
            return str(r.status_code)
        except httpx.ReadTimeout:
            return "left"

    assert asyncio.run(go()) == "left"
    assert received  # the provider took it
    spent = _settled(srv, pid)
    assert spent >= 640_000, spent  # micro-dollars
