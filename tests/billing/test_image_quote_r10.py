"""Image pricing, red team round 10: a streamed gpt-image call's partial images are reserved and billed (100 image
output tokens each, at the model's `output` rate), and an image call naming no model is priced as, and counted
against the rate limits of, the model the provider runs for it (keyplane.model_names.default_image_model).
Unit tests of the quote, then the same through the gateway (the fake upstream, or a stand-in streaming provider;
in-process limiter)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import orjson
import pytest
from aiohttp import web

from keyplane import errors, model_names
from keyplane.billing.price import MICROS
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote import quote
from keyplane.billing.quote_media import PARTIAL_IMAGE_TOKENS
from keyplane.limits import tokens
from keyplane.testing import FakeUpstream
from tests.billing.conftest import UPSTREAM_KEY_ENV, config
from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_in_thread
from tests.support import Gateways, RunningServer

GEN, EDIT, VARY = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"
LOW = {"quality": "low", "size": "1024x1024"}  # gpt-image-1: $0.011 an image
PRICES = PriceTable.from_config({})


def _quote(body: dict, endpoint: str = GEN, prices: PriceTable = PRICES, form: bool = False, files: int = 0):  # type: ignore[no-untyped-def]
    """The quote of ``body`` (as a JSON body, or as a multipart form's text fields when ``form``)."""
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if form:
        fields = {k: str(v) for k, v in body.items()}
        return quote(prices, endpoint, model, b"--b\r\n", None, False, fields, 4096, _Files(files))
    raw = orjson.dumps(body)
    return quote(prices, endpoint, model, raw, None, False, None, 4096, _Files(files) if files else None)


class _Files:
    """An upload's file count (proxy/uploads.py Upload.files)."""

    def __init__(self, files: int) -> None:
        self.files = files


def _prompt_micros(model: str, prompt: str) -> int:
    price = PRICES.lookup(model)
    assert price is not None
    return -(-tokens.counter(model).count(prompt) * price.input // MICROS)


# --- unit: partial images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,rate", [("gpt-image-1", 40), ("gpt-image-1-mini", 8), ("gpt-image-1.5", 32)])
def test_each_partial_image_is_reserved_as_100_image_output_tokens(model: str, rate: int) -> None:
    base = {"model": model, "prompt": "a cat", "n": 2, **LOW, "stream": True}
    plain = _quote(base)
    assert plain.unpriced is None and plain.estimate is None and plain.flat
    for partials in (1, 2, 3):
        q = _quote({**base, "partial_images": partials})
        assert q.estimate is None and q.model == model
        assert q.cost - plain.cost == 2 * partials * PARTIAL_IMAGE_TOKENS * rate  # n x partials x 100 x $/1M


def test_partial_images_of_an_edit_and_of_a_form_are_reserved_too() -> None:
    body = {"model": "gpt-image-1", "prompt": "a hat", **LOW, "stream": "true"}
    for endpoint in (GEN, EDIT):
        plain = _quote(body, endpoint, form=True, files=1)
        three = _quote({**body, "partial_images": "3"}, endpoint, form=True, files=1)
        assert three.cost - plain.cost == 3 * PARTIAL_IMAGE_TOKENS * 40
    json_edit = {"model": "gpt-image-1", "prompt": "x", **LOW, "images": [{"file_id": "file-a"}], "stream": True}
    assert _quote({**json_edit, "partial_images": 2}, EDIT).cost - _quote(json_edit, EDIT).cost == 2 * 100 * 40


@pytest.mark.parametrize("stream", [None, False, "false", "0", 0])
def test_partial_images_without_a_stream_add_nothing(stream: object) -> None:
    body = {"model": "gpt-image-1", "prompt": "a cat", **LOW, "partial_images": 3, "stream": stream}
    assert (
        _quote(body).cost
        == _quote({**body, "partial_images": 0}).cost
        == 11_000 + _prompt_micros("gpt-image-1", "a cat")
    )


@pytest.mark.parametrize("value", [4, -1, 1.5, True, "x", "4", [1], {"n": 1}, ""])
def test_an_invalid_partial_images_is_refused_400(value: object) -> None:
    body = {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "partial_images": value}
    for form in (False, True):
        if form and not isinstance(value, str | int):
            continue
        with pytest.raises(errors.APIError) as e:
            _quote(body, form=form)
        err = e.value
        assert (err.status, err.type, err.param) == (400, "invalid_request_error", "partial_images"), err.message
    with pytest.raises(errors.APIError):  # refused streamed or not, on an edit too
        _quote({**body, "stream": False}, EDIT)


def test_partial_images_of_a_model_without_an_output_rate_are_an_estimate() -> None:
    """An operator's gpt-image-1 entry without `output`: the partial images have no price, so the quote is an
    estimate (admission refuses it under money controls: cost_not_bounded) rather than an under-reservation."""
    price = PRICES.lookup("gpt-image-1")
    assert price is not None
    table = PriceTable({**PRICES.entries, "gpt-image-1": dataclasses.replace(price, output=0)})
    body = {"model": "gpt-image-1", "prompt": "a cat", **LOW, "stream": True}
    assert _quote(body, prices=table).estimate is None  # no partial images asked
    q = _quote({**body, "partial_images": 1}, prices=table)
    assert q.estimate is not None and "partial_images" in q.estimate and q.unpriced is None
    # dall-e models have no image output rate either: partial images asked of one are an estimate
    assert _quote({"model": "dall-e-3", "prompt": "x", "stream": True, "partial_images": 2}).estimate is not None


# --- unit: an image call naming no model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,files,expected",
    [
        ({"prompt": "a cat"}, 0, "dall-e-2"),
        ({"prompt": "a cat", "n": 3, "size": "512x512", "response_format": "b64_json", "user": "u"}, 0, "dall-e-2"),
        ({"prompt": "a cat", "quality": "standard", "model": None, "stream": None}, 0, "dall-e-2"),
        ({"prompt": "a cat", "quality": "high"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "size": "1536x1024"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "size": "auto"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "output_format": "png"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "background": "transparent"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "moderation": "low"}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "output_compression": 50}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "stream": False}, 0, "gpt-image-1"),
        ({"prompt": "a cat", "partial_images": 0}, 0, "gpt-image-1"),
        ({"prompt": "a hat", "input_fidelity": "high"}, 1, "gpt-image-1"),
        ({"prompt": "a hat", "images": [{"file_id": "file-a"}]}, 0, "gpt-image-1"),
        ({"prompt": "a hat"}, 2, "dall-e-2"),  # an image and its mask
        ({"prompt": "a hat"}, 3, "gpt-image-1"),  # more input images than dall-e-2 takes
        ({"prompt": "a cat", "quality": "hd"}, 0, None),  # dall-e-3's: cannot be told
        ({"prompt": "a cat", "style": "vivid"}, 0, None),
        ({"prompt": "a cat", "Quality": "high"}, 0, None),  # a field neither takes
        ({"prompt": "a cat", "size": 1024}, 0, None),
    ],
)
def test_the_default_image_model(fields: dict, files: int, expected: str | None) -> None:
    assert model_names.default_image_model(fields, files) == expected


def test_a_variation_naming_no_model_is_dall_e_2() -> None:
    assert model_names.default_image_model({"size": "1536x1024", "output_format": "png"}, 1, variation=True) == (
        "dall-e-2"
    )
    assert _quote({"n": 2}, VARY, form=True, files=1).model == "dall-e-2"


def test_a_call_naming_no_model_is_priced_as_the_model_the_provider_runs() -> None:
    body = {"prompt": "a cat", "n": 10, "quality": "high", "size": "1536x1024", "output_format": "png"}
    q = _quote(body)
    assert q.model == "gpt-image-1" and q.estimate is None and q.unpriced is None
    assert q.cost == 10 * 250_000 + _prompt_micros("gpt-image-1", "a cat")
    assert _quote({**body, "model": None}).cost == q.cost  # a null model names none
    form = _quote({"prompt": "a hat", "output_format": "png", **LOW}, EDIT, form=True, files=1)
    assert form.model == "gpt-image-1"
    assert _quote({"prompt": "a hat"}, EDIT, form=True, files=3).model == "gpt-image-1"
    plain = _quote({"prompt": "a cat", "n": 2})
    assert (plain.model, plain.cost, plain.estimate) == ("dall-e-2", 40_000, None)  # dall-e-2 1024x1024, as before
    streamed = _quote({"prompt": "a cat", **LOW, "stream": True, "partial_images": 2})
    assert streamed.model == "gpt-image-1"
    assert streamed.cost == 11_000 + _prompt_micros("gpt-image-1", "a cat") + 2 * 100 * 40


def test_a_call_whose_model_cannot_be_told_is_an_estimate_priced_as_gpt_image_1() -> None:
    q = _quote({"prompt": "a cat", "quality": "hd", "size": "1024x1024"})
    assert q.model == "gpt-image-1" and q.unpriced is None
    assert q.estimate is not None and "name the model" in q.estimate


def test_a_call_naming_no_model_whose_model_has_no_price_is_refused_under_money_controls() -> None:
    table = PriceTable({k: v for k, v in PRICES.entries.items() if k != "gpt-image-1"})
    q = _quote({"prompt": "a cat", "output_format": "png"}, prices=table)
    assert q.unpriced is not None and q.unpriced.code == "cost_not_bounded" and "gpt-image-1" in q.unpriced.message
    assert _quote({"prompt": "a cat"}, prices=table).model == "dall-e-2"  # still priced


# --- through the gateway -----------------------------------------------------------------------------------


def _post(srv: RunningServer, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.v1 + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _code(r: httpx.Response) -> str | None:
    return r.json().get("error", {}).get("code") if r.status_code >= 400 else None


def _project(srv: RunningServer) -> tuple[str, str]:
    p = admin(srv, "POST", "/projects", {"name": "images r10"})
    return p["id"], admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})["value"]


def _limit(srv: RunningServer, pid: str, cents: int) -> None:
    body = {"currency": "USD", "interval": "month", "threshold_amount": cents}
    admin(srv, "POST", f"/projects/{pid}/spend_limit", body)


def _spent(srv: RunningServer, pid: str) -> int:
    return int(srv.call(srv.app.runtime.features.billing.spent("project", pid))[0])


@pytest.fixture
def start(gateways: Gateways) -> Callable[[str], RunningServer]:
    return lambda text: gateways.start(text)


class _Streamer:
    """A provider streaming gpt-image generations as OpenAI does: a `partial_images` event per partial image, then
    `image_generation.completed`."""

    def __init__(self) -> None:
        self.calls = 0

        async def generate(req: web.Request) -> web.StreamResponse:
            body = await req.json()
            self.calls += 1
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            for i in range(int(body.get("partial_images") or 0)):
                ev = {"type": "image_generation.partial_image", "b64_json": "AAAA", "partial_image_index": i}
                await resp.write(b"event: image_generation.partial_image\ndata: " + orjson.dumps(ev) + b"\n\n")
            done = {"type": "image_generation.completed", "b64_json": "AAAA"}
            await resp.write(b"event: image_generation.completed\ndata: " + orjson.dumps(done) + b"\n\n")
            return resp

        port = serve_in_thread("/v1/images/generations", generate)
        self.config = (
            f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 0\n'
        )


def test_a_streamed_generations_partial_images_are_reserved_and_billed(start) -> None:  # type: ignore[no-untyped-def]
    """$0.011 an image + the prompt + 100 tokens at $40/1M per partial image: under a 2-cent limit, one partial
    image passes and is billed; three ($0.023) are refused before the provider is called."""
    up = _Streamer()
    srv = start(up.config)
    pid, key = _project(srv)
    _limit(srv, pid, 2)
    body = {"model": "gpt-image-1", "prompt": "a cat", **LOW, "stream": True}
    one = 11_000 + _prompt_micros("gpt-image-1", "a cat") + 100 * 40
    r = _post(srv, key, "/images/generations", {**body, "partial_images": 1})
    assert r.status_code == 200 and b"image_generation.completed" in r.content, r.text[:200]
    assert _spent(srv, pid) == one
    r = _post(srv, key, "/images/generations", {**body, "partial_images": 3})
    assert r.status_code == 429 and up.calls == 1, r.text[:200]
    assert _spent(srv, pid) == one


@pytest.mark.parametrize("value", [4, -1, "three", 2.5, None])
def test_an_invalid_partial_images_is_refused_before_the_call(start, fake: FakeUpstream, value: object) -> None:  # type: ignore[no-untyped-def]
    srv = start(config(fake))
    body: dict[str, object] = {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "partial_images": value}
    fake.requests.clear()
    r = _post(srv, srv.api_key, "/images/generations", body)
    if value is None:  # null: none asked
        assert r.status_code == 200, r.text[:200]
        return
    assert r.status_code == 400, r.text[:200]
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", "partial_images") and "0 to 3" in err["message"]
    assert fake.model_requests() == []


def test_an_image_call_naming_no_model_is_billed_as_gpt_image_1(start, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    srv = start(config(fake))
    pid, key = _project(srv)
    body = {"prompt": "a cat", "n": 2, **LOW, "output_format": "png"}
    r = _post(srv, key, "/images/generations", body)
    assert r.status_code == 200, r.text[:200]
    assert _spent(srv, pid) == 2 * 11_000 + _prompt_micros("gpt-image-1", "a cat")
    r = _post(srv, key, "/images/generations", {"prompt": "a cat"})  # dall-e-2 1024x1024, as before
    assert r.status_code == 200, r.text[:200]
    assert _spent(srv, pid) == 2 * 11_000 + _prompt_micros("gpt-image-1", "a cat") + 20_000


def test_an_image_call_naming_no_model_counts_against_gpt_image_1s_rate_limits(start, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    srv = start(config(fake))
    pid, key = _project(srv)
    admin(srv, "POST", f"/projects/{pid}/rate_limits/rl-gpt-image-1", {"max_requests_per_1_minute": 1})
    body = {"prompt": "a cat", **LOW, "output_format": "png"}
    assert _post(srv, key, "/images/generations", body).status_code == 200
    fake.requests.clear()
    r = _post(srv, key, "/images/generations", body)
    assert r.status_code == 429 and _code(r) == "rate_limit_exceeded" and fake.model_requests() == [], r.text[:300]
    named = _post(srv, key, "/images/generations", {**body, "model": "gpt-image-1"})
    assert named.status_code == 429  # the same bucket
    assert _post(srv, key, "/images/generations", {"prompt": "a cat"}).status_code == 200  # dall-e-2's


def test_an_image_call_whose_model_cannot_be_told_is_refused_under_a_spend_limit(start, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    srv = start(config(fake))
    pid, key = _project(srv)
    body = {"prompt": "a cat", "quality": "hd"}
    assert _post(srv, key, "/images/generations", body).status_code == 200  # no money controls: served
    _limit(srv, pid, 100)
    fake.requests.clear()
    r = _post(srv, key, "/images/generations", body)
    assert r.status_code == 403 and _code(r) == "cost_not_bounded", r.text[:200]
    assert "name the model" in r.json()["error"]["message"] and fake.model_requests() == []
    ok = _post(srv, key, "/images/generations", {**body, "model": "gpt-image-1", "quality": "high"})  # named: served
    assert ok.status_code == 200, ok.text[:200]
