"""Week 50 red-team review, round 7: request shapes a holder of a valid (restricted, limited) key might use to get
past a hard spend limit or a model permission. Each test states the secure behaviour and failed against the
code it was written on (tests/redteam/conftest.py: the gateway on the fake upstream, PRICED gpt-4o-mini: $0 input,
$1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.proxy.conftest import admin
from tests.redteam.test_wk49_round4 import _limit, _spent

MSG = [{"role": "user", "content": "hi"}]


def _post(srv, key: str, path: str, body: bytes | dict, ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    h = {"Authorization": f"Bearer {key}", "Content-Type": ctype}
    return httpx.post(srv.v1 + path, content=raw, headers=h, timeout=30)


def _code(r: httpx.Response) -> str | None:
    return r.json().get("error", {}).get("code") if r.status_code >= 400 else None


# --- model permissions: a deny list and the upstreams' own model variants -------------------------------------


def test_a_deny_list_holds_the_models_tagged_variants(make_gw, fake):
    """A deny list is read "generously" (docs/access-control.md): `gpt-4o` denies `openai/gpt-4o` and dated
    snapshots. But the upstreams keyplane supports name one model several ways with a `:` suffix: Ollama's
    `llama3.1` IS `llama3.1:latest` (and `:8b`), OpenRouter serves `openai/gpt-4o` as `openai/gpt-4o:nitro`,
    `:floor`, `:online`... keyplane.access.policy.ModelPolicy.allows compares the whole name (`_DATED` only knows
    `-date`, `-latest`, `-preview`), so a key denied `gpt-4o` ran it as `gpt-4o:latest` / `gpt-4o:nitro`."""
    srv = make_gw()
    admin(srv, "POST", f"/projects/{srv.project_id}/model_permissions", {"mode": "deny_list", "model_ids": ["gpt-4o"]})
    r = _post(srv, srv.api_key, "/chat/completions", {"model": "gpt-4o", "max_tokens": 5, "messages": MSG})
    assert r.status_code == 403 and _code(r) == "model_not_permitted"  # the plain name is held
    fake.requests.clear()
    for m in ("gpt-4o:latest", "gpt-4o:nitro", "gpt-4o:online"):
        r = _post(srv, srv.api_key, "/chat/completions", {"model": m, "max_tokens": 5, "messages": MSG})
        assert r.status_code == 403 and _code(r) == "model_not_permitted", (m, r.status_code, r.text[:200])
    assert fake.model_requests() == []


# --- what admission reserves ---------------------------------------------------------------------------------


def test_a_predicted_output_is_reserved_at_the_output_rate(make_gw, fake):
    """Predicted Outputs: "tokens in the prediction that did not appear in the completion ... are still counted in
    the total completion tokens for purposes of billing" (OpenAI's `rejected_prediction_tokens`). The prediction is
    counted at admission as prompt (limits/tokens.py Counter.chat scans `prediction` with the messages), priced at
    the INPUT rate; the output reserved is only max_completion_tokens x n. With gpt-4o-mini priced $0 in / $1600
    out, a 1-cent budget (room for 5 output tokens) admits a call whose 10,000-token prediction can be billed
    ~10,000 completion tokens ($16): one request takes the budget ~1600x past its hard limit, and a race of them
    more. The reservation must count the prediction's tokens at the output rate (or refuse `prediction` under
    money controls)."""
    srv = make_gw()
    _limit(srv, srv.project_id, 1)  # 10000 micro-dollars
    body = {
        "model": "gpt-4o-mini",
        "max_completion_tokens": 5,
        "messages": MSG,
        "prediction": {"type": "content", "content": "word " * 10_000},
    }
    fake.requests.clear()
    r = _post(srv, srv.api_key, "/chat/completions", body)
    assert r.status_code in (403, 429), (r.status_code, r.text[:200])
    assert fake.model_requests() == []


def test_every_input_image_of_a_json_image_edit_is_reserved(make_gw, fake):
    """gpt-image edits take their input images as JSON too (`images: [{image_url | file_id}]`, up to 16), each billed
    as input image tokens. billing/quote.quote counts the edit's images as `body.count(b"filename=")` (multipart file
    parts): a JSON body has none, so `max(1, files)` reserves ONE image allowance (6000 tokens) however many it
    sends, and since images are settled at the reserved (flat) price, the other 15 are never billed either. The
    same edit as multipart (16 `image[]` parts) is reserved for 16 and refused below."""
    srv = make_gw()
    _limit(srv, srv.project_id, 10)  # 100000 micro-dollars: one image's allowance (~41000) fits, sixteen do not
    imgs = [{"image_url": f"https://example.com/{i}.png"} for i in range(16)]
    form = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "size": "1024x1024"}
    # multipart, 16 image parts: refused (the allowance is reserved per part)
    b = "kpb"
    parts = "".join(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in form.items())
    files = "".join(
        f'--{b}\r\nContent-Disposition: form-data; name="image[]"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\nPNG{i}\r\n"
        for i in range(16)
    )
    whole = (parts + files + f"--{b}--\r\n").encode()
    mp = _post(srv, srv.api_key, "/images/edits", whole, f"multipart/form-data; boundary={b}")
    assert mp.status_code == 429, mp.text[:200]
    fake.requests.clear()
    r = _post(srv, srv.api_key, "/images/edits", {**form, "images": imgs})
    assert r.status_code == 429, (r.status_code, r.text[:200], _spent(srv, srv.project_id))
    assert fake.model_requests() == []


# --- a body two parsers read two ways ------------------------------------------------------------------------

_DUPS = [
    # keyplane (msgspec, orjson: the last value) reserves 5 output tokens; a first-value parser upstream writes 100,000
    b'{"model":"gpt-4o-mini","max_tokens":100000,"max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
    # priced as gpt-4o-mini, served as gpt-4o by a first-value parser (~16x the price)
    b'{"model":"gpt-4o","model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
    # one choice reserved, 128 generated
    b'{"model":"gpt-4o-mini","n":128,"n":1,"max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
    # `background: false` read here (so admitted, metered as a normal call), a background response upstream
    b'{"model":"gpt-4o-mini","background":true,"background":false,"max_output_tokens":5,"input":"x"}',
]


@pytest.mark.parametrize("body", _DUPS, ids=["max_tokens", "model", "n", "background"])
def test_a_spending_body_repeating_a_priced_key_is_refused(make_gw, fake, body):
    """DESIGN rule 0 refuses what could be read two ways, and docs/access-control.md refuses a repeated key "while a
    policy applies: a parser that keeps the first value and one that keeps the last must not disagree". Without a
    model or tool policy, nothing does: proxy/request.read_fields (msgspec) and billing/quote (orjson) read the
    LAST `max_tokens`/`model`/`n`/`background`, admission reserves that, and the body goes upstream byte for byte
    (DESIGN rule 3) with both values. An upstream whose parser keeps the first (simdjson on-demand lookups, some
    C++/Java configurations) writes 100,000 tokens against a 5-token reservation, runs gpt-4o priced as
    gpt-4o-mini, generates 128 choices, or runs a background response keyplane never meters. A spending body that
    repeats a key admission reads must be refused (400 duplicate_key), policy or not."""
    srv = make_gw()
    _limit(srv, srv.project_id, 100)
    path = "/responses" if b'"input"' in body else "/chat/completions"
    fake.requests.clear()
    r = _post(srv, srv.api_key, path, body)
    assert r.status_code == 400 and _code(r) == "duplicate_key", (r.status_code, r.text[:200])
    assert fake.model_requests() == []


def test_a_prediction_is_reserved_at_the_output_rate_and_a_json_edit_per_image():
    """The quotes behind the two reservation fixes: a chat prediction's tokens are added to the output reserved
    (at the output rate, per answer); each input image of a JSON image edit gets the edit allowance."""
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.quote import quote
    from keyplane.billing.quote_media import EDIT_IMAGE_TOKENS

    prices = PriceTable.from_config({})
    price = prices.lookup("gpt-4o-mini")
    assert price is not None

    def chat(extra: dict) -> int:
        body = orjson.dumps({"model": "gpt-4o-mini", "max_completion_tokens": 5, "messages": MSG, **extra})
        return quote(prices, "/v1/chat/completions", "gpt-4o-mini", body, 5, False, None, 4096).cost

    plain, predicted = chat({}), chat({"prediction": {"type": "content", "content": "word " * 1_000}})
    assert predicted - plain >= 1_000 * price.output // 1_000_000  # a thousand more output tokens at least

    def edit(body: dict) -> int:
        raw = orjson.dumps({"model": "gpt-image-1", "prompt": "x", "quality": "low", "size": "1024x1024", **body})
        return quote(prices, "/v1/images/edits", "gpt-image-1", raw, None, False, None, 4096).cost

    image = prices.lookup("gpt-image-1")
    assert image is not None
    one = edit({"images": [{"image_url": "https://example.com/a.png"}]})
    three = edit({"images": [{"file_id": "file-a"}, {"file_id": "file-b"}], "mask": {"file_id": "file-m"}})
    assert image.image_input is not None  # an edit's input images at the model's image input rate
    assert three - one == 2 * EDIT_IMAGE_TOKENS * image.image_input // 1_000_000


def test_a_body_read_alike_by_every_parser_passes_and_nested_repeats_are_refused(make_gw, fake):
    """The duplicate check reads every object: a repeat inside `stream_options` or a message is refused too; a body
    with escapes and non-ASCII text (the Python SDK's ensure_ascii) passes."""
    srv = make_gw()
    ok = _post(
        srv,
        srv.api_key,
        "/chat/completions",
        b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"caf\\u00e9 \\"x\\"\\n"}]}',
    )
    assert ok.status_code == 200, ok.text
    nested = b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"a","content":"b"}]}'
    r = _post(srv, srv.api_key, "/chat/completions", nested)
    assert r.status_code == 400 and _code(r) == "duplicate_key" and r.json()["error"]["param"] == "content"
    escaped = b'{"model":"gpt-4o-mini","\\u006dax_tokens":100000,"max_tokens":5,"messages":[]}'
    r = _post(srv, srv.api_key, "/chat/completions", escaped)
    assert r.status_code == 400 and _code(r) == "duplicate_key"


def test_a_body_on_a_method_that_takes_none_is_refused_not_forwarded(make_gw, fake):
    """GET, HEAD, DELETE and OPTIONS bodies were forwarded unadmitted and unchecked (tenancy reads POST bodies);
    HEAD was a keyplane 500. Now: 400 `unexpected_body`, nothing upstream; a HEAD without a body is answered."""
    srv = make_gw()
    h = {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"}
    fake.requests.clear()
    for m in ("GET", "HEAD", "DELETE", "OPTIONS"):
        r = httpx.request(m, srv.v1 + "/chat/completions", content=b'{"model":"gpt-4o-mini","messages":[]}', headers=h)
        assert r.status_code == 400, (m, r.status_code)
        if m != "HEAD":
            assert _code(r) == "unexpected_body"
    assert list(fake.requests) == []
    assert httpx.head(srv.v1 + "/files", headers=h).status_code < 500


def test_an_answer_that_is_not_http_is_a_502_not_a_500(make_gateway):
    """An upstream (or what sits in front of it) that answers something that is not HTTP was a keyplane 500
    (aiohttp's ClientResponseError was not one of the attempt errors): now 502 `upstream_bad_response`."""
    import socket
    import threading

    from tests.proxy.conftest import fake_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"garbage, not an HTTP status line\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    class _Garbled:
        base_url = f"http://127.0.0.1:{port}/v1"

    try:
        srv = make_gateway(fake_config(_Garbled(), max_retries=0))  # type: ignore[arg-type]
        for path, body in (("/chat/completions", {"model": "gpt-4o-mini", "messages": MSG}), ("/files", None)):
            if body is None:
                r = httpx.get(srv.v1 + path, headers={"Authorization": f"Bearer {srv.api_key}"}, timeout=30)
            else:
                r = _post(srv, srv.api_key, path, body)
            assert r.status_code == 502 and _code(r) == "upstream_bad_response", (path, r.status_code, r.text[:200])
    finally:
        sock.close()


def test_a_variant_name_counts_against_its_models_rate_limit(make_gw, fake):
    """A project's RPM of 1 for gpt-4o-mini held `gpt-4o-mini` but not `gpt-4o-mini:latest`, `openai/gpt-4o-mini`
    or `gpt-4o-mini@x` (each its own bucket at the tier's default): the variants share the model's bucket now."""
    srv = make_gw()
    admin(srv, "POST", f"/projects/{srv.project_id}/rate_limits/rl-gpt-4o-mini", {"max_requests_per_1_minute": 1})
    first = _post(srv, srv.api_key, "/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 5, "messages": MSG})
    assert first.status_code == 200, first.text
    for m in ("gpt-4o-mini:latest", "gpt-4o-mini@x"):  # (openai/... is not routed here: no upstream serves it)
        r = _post(srv, srv.api_key, "/chat/completions", {"model": m, "max_tokens": 5, "messages": MSG})
        assert r.status_code == 429 and _code(r) == "rate_limit_exceeded", (m, r.status_code, r.text[:200])


def test_the_model_a_variant_name_counts_against():
    from keyplane.billing.ratelimits import base_model

    assert base_model("openai/gpt-4o-mini:nitro") == base_model("GPT-4o-mini") == "gpt-4o-mini"
    assert base_model("llama3.1:latest") == base_model("llama3.1@8b") == "llama3.1"
    assert base_model("ft:gpt-4o-mini:acme::abc") == "ft:gpt-4o-mini:acme::abc"  # a fine-tune is its own model
