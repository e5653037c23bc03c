"""Week 50 red-team review, round 18: a holder of a valid project key (or a restricted one) against the response
cache, routing and fallbacks, rate limits and hosted tool permissions, with the OpenAI-compatible upstreams keyplane
says it fronts (OpenRouter here). Each test states the secure behaviour and failed on the code as this round found
it; each passes with its fix: 1 (OpenRouter's spellings of web search, the `web` plugin and the
`openrouter:web_search` server tool, passed a disabled `web_search`: access/inspect.py), 2 (OpenRouter's `models`
fallback list: the upstream serves a model keyplane never checked, limited nor priced; proxy/request.py refuses it,
access/inspect.py reads it) (tests/redteam/conftest.py: a gateway on stand-in upstreams, in-process limiter)."""

from __future__ import annotations

from aiohttp import web

from tests.billing.conftest import PRICED
from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_routes
from tests.redteam.test_wk49_round4 import _project
from tests.redteam.test_wk50_round10 import _code, _post
from tests.redteam.test_wk50_round11 import _settled
from tests.redteam.test_wk50_round13 import _upstream


def _openrouter() -> tuple[int, list[dict]]:
    """A stand-in for OpenRouter's chat completions: the `web` plugin (or an `:online` model, or the
    `openrouter:web_search` server tool) searches the web; a `models` list is the fallbacks it serves the request
    with when the primary `model` is unavailable (here it always is). Answers 5 prompt tokens and 1,000 output
    tokens, naming the model that served it; the bodies it received."""
    seen: list[dict] = []

    async def chat(req: web.Request) -> web.Response:
        body = await req.json()
        seen.append(body)
        served = body["model"]
        fallbacks = body.get("models")
        if isinstance(fallbacks, list) and fallbacks:
            served = fallbacks[0]  # the primary's providers are down: the first fallback serves it
        usage = {"prompt_tokens": 5, "completion_tokens": 1000, "total_tokens": 1005}
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        return web.json_response(
            {"id": "gen-r18", "object": "chat.completion", "model": served, "choices": [choice], "usage": usage}
        )

    return serve_routes({"/v1/chat/completions": chat}), seen


# --- 1. OpenRouter's spellings of web search ---------------------------------------------------------------------


def test_a_disabled_web_search_is_not_enabled_by_openrouters_spellings(make_gw):
    """docs/access-control.md: with `web_search` disabled for a project, every spelling of the tool is refused
    (its variants, `:online` models). OpenRouter, one of the upstreams keyplane fronts, searches the web for any
    model with `"plugins": [{"id": "web"}]` (what `:online` is shorthand for) or the server tool
    `{"type": "openrouter:web_search"}`; access/inspect.py read neither (a `plugins` entry has an `id`, not a
    `type`; `openrouter:web_search` does not start with `web_search`), so both reached the upstream and searched
    (at $4 per 1,000 results, billed by OpenRouter). Expected: 403 `tool_not_permitted`, nothing sent upstream."""
    port, seen = _openrouter()
    srv = make_gw(config_text=_upstream(port, prices=PRICED))
    pid, key = _project(srv)
    admin(srv, "POST", f"/projects/{pid}/hosted_tool_permissions", {"web_search": {"enabled": False}})
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "news?"}], "max_tokens": 5}
    for extra in (
        {"plugins": [{"id": "web"}]},
        {"plugins": [{"id": "web", "max_results": 20}]},
        {"tools": [{"type": "openrouter:web_search"}]},
        {"tools": [{"type": "OpenRouter:Web_Search", "parameters": {"max_results": 25}}]},
    ):
        r = _post(srv, key, "/chat/completions", {**base, **extra})
        assert r.status_code == 403 and _code(r) == "tool_not_permitted", (extra, r.status_code, r.text)
    assert seen == [], f"{len(seen)} web searches reached the upstream"
    r = _post(srv, key, "/chat/completions", {**base, "plugins": [{"id": "file-parser"}]})  # not a search
    assert r.status_code == 200, r.text


def test_openrouters_web_search_is_not_run_unpriced_under_a_spend_limit(make_gw):
    """The same spellings with web search allowed, under a spend limit: OpenRouter bills the `web` plugin (and an
    `:online` model, its shorthand) per result fetched, $4 per 1,000, five or more a call; keyplane reserved the
    tokens alone and never billed a search. A server tool (`openrouter:web_search`) was held as a hosted tool keyplane
    does not price; the plugin was not. Expected: refused under money controls (403 `cost_not_bounded`), as every
    hosted tool keyplane does not price is."""
    from tests.redteam.test_wk49_round4 import _limit

    port, seen = _openrouter()
    online = '[prices."gpt-4o-mini:online"]\ninput = 0\noutput = 1600\n'  # its tokens priced, not its searches
    srv = make_gw(config_text=_upstream(port, prices=PRICED + online))
    pid, key = _project(srv)
    _limit(srv, pid, 1000)
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "news?"}], "max_tokens": 5}
    for extra in (
        {"plugins": [{"id": "web"}]},
        {"tools": [{"type": "openrouter:web_search"}]},
        {"model": "gpt-4o-mini:online"},
    ):
        r = _post(srv, key, "/chat/completions", {**base, **extra})
        assert r.status_code == 403 and _code(r) == "cost_not_bounded", (extra, r.status_code, r.text[:300])
    assert seen == []


# --- 2. OpenRouter's `models` fallbacks --------------------------------------------------------------------------

_DEAR = '[prices."gpt-4-dear"]\ninput = 0\noutput = 60000\n'  # $60,000 per 1M output tokens


def test_a_fallback_model_list_cannot_take_a_request_to_a_model_keyplane_did_not_admit(make_gw):
    """OpenRouter takes `"models": [...]`, fallback models it serves the request with when the primary `model` is
    unavailable, rate-limited or refuses it (a prompt too long for the primary is enough). keyplane read only
    `model`: a key whose allow list holds `gpt-4o-mini` alone had `gpt-4-dear` served (model permissions passed,
    the model named by no `model` field), and the call was reserved, rate-limited and billed as `gpt-4o-mini`
    ($1600 per 1M output tokens) while the dear model wrote 1,000 tokens at $60,000 per 1M: a hard spend limit is
    passed 37 times over per request. Expected: a request whose `models` names another model than `model` is
    refused before the upstream (keyplane routes and falls back itself), whatever the key's policies; with a model
    policy it is refused as the model it names; nothing is billed at a price it was not served at."""
    port, seen = _openrouter()
    srv = make_gw(config_text=_upstream(port, prices=PRICED + _DEAR))
    pid, key = _project(srv)
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    r = _post(srv, key, "/chat/completions", {**base, "models": ["gpt-4-dear"]})
    assert r.status_code == 400, (r.status_code, r.text)
    assert seen == [], "the upstream was free to serve a model keyplane priced as another"
    assert _settled(srv, pid) == 0
    # The same model as `model` (or an empty list) names nothing else: served, billed at its price.
    for same in (["gpt-4o-mini"], []):
        r = _post(srv, key, "/chat/completions", {**base, "models": same})
        assert r.status_code == 200, r.text
    # The same request from a key whose allow list holds gpt-4o-mini alone: refused too, before the upstream.
    kid = next(k["id"] for k in admin(srv, "GET", f"/projects/{pid}/api_keys")["data"])
    admin(srv, "POST", f"/projects/{pid}/api_keys/{kid}/model_permissions", _ALLOW_MINI)
    r = _post(srv, key, "/chat/completions", {**base, "models": ["gpt-4-dear"]})
    assert r.status_code in (400, 403), (r.status_code, r.text)
    assert len(seen) == 2


_ALLOW_MINI = {"mode": "allow_list", "model_ids": ["gpt-4o-mini"]}


def test_a_batch_line_naming_fallback_models_is_held_to_the_model_permissions(make_gw, fake):
    """The same `models` list in a batch line: a line is checked against the model permissions by every model it
    names (docs/access-control.md "Batches"), but a list of model names was not one of them: with the project's
    allow list holding gpt-4o-mini alone, a line whose `models` names gpt-4-dear was let through. Expected: 403
    `model_not_permitted` naming the line, no batch created at the provider."""
    from tests.redteam.test_wk49_round4 import _client, _line

    srv = make_gw(_DEAR)
    admin(srv, "POST", f"/projects/{srv.project_id}/model_permissions", _ALLOW_MINI)
    c = _client(srv, srv.api_key)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    f = c.files.create(file=("in.jsonl", _line(1, {**body, "models": ["gpt-4-dear"]})), purpose="batch")
    before = len(fake.objects.batches)
    r = _post(
        srv,
        srv.api_key,
        "/batches",
        {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert r.status_code == 403 and _code(r) == "model_not_permitted", (r.status_code, r.text)
    assert "gpt-4-dear" in r.text
    assert len(fake.objects.batches) == before


# --- 3. llama.cpp's own output limit -----------------------------------------------------------------------------


def _llama_cpp() -> tuple[int, list[dict]]:
    """A stand-in for llama.cpp's server (examples/server): its OpenAI-compatible endpoints pass every field they do
    not know on to the completion's parameters, and `n_predict = json_value(data, "n_predict", json_value(data,
    "max_tokens", ...))`: `n_predict` wins over `max_tokens`; -1 is "until the end of the context". Writes that
    many tokens (the context is 4,096 here); the bodies it received."""
    seen: list[dict] = []

    async def chat(req: web.Request) -> web.Response:
        body = await req.json()
        seen.append(body)
        n = body.get("n_predict", body.get("max_tokens", -1))
        written = 4096 if n < 0 else n
        usage = {"prompt_tokens": 5, "completion_tokens": written, "total_tokens": 5 + written}
        choice = {"index": 0, "message": {"role": "assistant", "content": "w " * 8}, "finish_reason": "length"}
        return web.json_response(
            {
                "id": "chatcmpl-r18",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    return serve_routes({"/v1/chat/completions": chat, "/v1/completions": chat}), seen


def test_llama_cpps_n_predict_is_the_output_limit_reserved(make_gw):
    """DESIGN.md names llama.cpp among the servers keyplane fronts. Its server reads `n_predict` before
    `max_tokens` on the OpenAI-compatible endpoints, so a body with `max_tokens: 5` and `n_predict: 1000` was
    reserved for 5 output tokens ($0.008 at $1600 per 1M) and wrote 1,000 ($1.60): under a $1 project limit the
    first such call spent $1.60, and concurrent ones multiply it (each reserves $0.008). `n_predict: -1` (until the
    context is full) likewise. Expected: `n_predict` is an output limit like the others, the largest one reserved
    (refused here: $1.60 does not fit in $1), a value below 1 refused (400), nothing spent past the limit."""
    from tests.redteam.test_wk49_round4 import _limit

    port, seen = _llama_cpp()
    srv = make_gw(config_text=_upstream(port, prices=PRICED))
    pid, key = _project(srv)
    _limit(srv, pid, 100)  # $1
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}], "max_tokens": 5}
    for extra, path in (({"n_predict": 1000}, "/chat/completions"), ({"n_predict": -1}, "/chat/completions")):
        r = _post(srv, key, path, {**base, **extra})
        assert r.status_code >= 400, (extra, r.status_code, r.text[:200])
    r = _post(srv, key, "/completions", {"model": "gpt-4o-mini", "prompt": "go", "max_tokens": 5, "n_predict": -2})
    assert r.status_code == 400, r.text
    assert seen == [], f"{len(seen)} calls reached the upstream with an output limit keyplane did not reserve"
    assert _settled(srv, pid) <= 1_000_000
    r = _post(srv, key, "/chat/completions", {**base, "n_predict": 100})  # $0.16: fits, reserved and billed
    assert r.status_code == 200, r.text
    assert _settled(srv, pid) == 100 * 1600
