"""What a request may cost (issue 12 items 3-5, issue 14 item 6), through real HTTP on both backends.

The fake upstream writes as many output tokens as it is allowed (Behaviour.max_output); a request
without an output limit must reserve, and be held to, what it can really cost.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from keyplane.testing import Behaviour
from tests.billing.conftest import COST, admin_sdk, billing_of
from tests.billing.conftest import set_spend_limit as _limit

HI = [{"role": "user", "content": "hi"}]


def _extra_upstream(fake, models: str) -> str:
    return (
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        f'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = [{models}]\n'
    )


def _spent(srv) -> tuple[int, int]:
    return srv.call(billing_of(srv).spent("project", srv.project_id))


async def _race(base_url: str, key: str, n: int, body: dict) -> collections.Counter:
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)

    async def one() -> str:
        try:
            r = await client.chat.completions.create(**body)
            return f"ok:{r.usage.completion_tokens}"
        except openai.RateLimitError as e:
            return str(e.code)

    try:
        return collections.Counter(await asyncio.gather(*[one() for _ in range(n)]))
    finally:
        await client.close()


# --- item 3: requests without an output limit ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["table", "default"])
def test_200_requests_without_max_tokens_never_pass_a_hard_limit(make_gateway, fake, variant):
    """The upstream writes all it may; a $0.40 budget is never passed, and every cent of it usable."""
    fake.default = Behaviour(max_output=500)
    if variant == "table":  # the model's maximum output from the price table: 20 tokens
        srv = make_gateway('[prices."fake-model"]\ninput = 0\noutput = 1600\nmax_output = 20\n')
        model, allowed = "fake-model", 20
    else:  # no maximum in the table: default_max_tokens (10) is reserved and given
        srv = make_gateway(KEYPLANE_DEFAULT_MAX_TOKENS="10")
        model, allowed = "gpt-4o-mini", 10
    _limit(srv, 40)
    per = allowed * 1600  # micro-dollars: input is free
    counts = asyncio.run(_race(srv.v1, srv.api_key, 200, {"model": model, "messages": HI}))
    ok = 400_000 // per
    assert counts == {f"ok:{allowed}": ok, "project_spend_limit_exceeded": 200 - ok}
    assert _spent(srv) == (ok * per, 0)  # never past the limit, and no reservation left behind
    sent = [r.json() for r in fake.model_requests()]
    assert len(sent) == ok and all(b["max_completion_tokens"] == allowed for b in sent)


@pytest.mark.parametrize(
    "path,field",
    [
        ("/chat/completions", "max_completion_tokens"),
        ("/completions", "max_tokens"),
        ("/responses", "max_output_tokens"),
    ],
)
def test_the_reserved_output_limit_is_the_field_the_endpoint_reads(make_gateway, fake, path, field):
    srv = make_gateway(KEYPLANE_DEFAULT_MAX_TOKENS="7")
    fake.default = Behaviour(max_output=500)
    body = {"model": "gpt-4o-mini", "messages": HI, "prompt": "hi", "input": "hi"}
    r = httpx.post(srv.v1 + path, json=body, headers={"Authorization": f"Bearer {srv.api_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    sent = fake.model_requests()[-1].json()
    assert (
        sent[field] == 7 and sum(f in sent for f in ("max_tokens", "max_completion_tokens", "max_output_tokens")) == 1
    )
    assert _spent(srv)[0] == 7 * 1600
    # a request that sets its own limit is forwarded untouched
    r = httpx.post(srv.v1 + path, json={**body, field: 3}, headers={"Authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 200 and fake.model_requests()[-1].json()[field] == 3


# --- item 4: every spending endpoint priced or refused ------------------------------------------------


def test_shipped_prices_have_no_broad_globs():
    from keyplane.billing.prices import PriceTable, family

    t = PriceTable.from_config({})
    assert t.lookup("gpt-5-pro").output == 120_000_000 and t.lookup("gpt-5").output == 10_000_000
    assert t.lookup("gpt-5-pro-2025-10-06") == t.lookup("gpt-5-pro")
    assert t.lookup("gpt-5-turbo-ultra") is None and t.lookup("gpt-4o-mini-search-preview") is None
    assert t.lookup("gpt-4o-2024-05-13").input == 5_000_000  # its own entry beats its model's
    assert t.lookup("gpt-4o-mini").max_output == 16_384 and t.lookup("o3").max_output == 100_000
    assert family("gpt-4-0613") == "gpt-4" and family("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert t.lookup("dall-e-3").images and not t.lookup("dall-e-3").tokens


def test_images_and_speech_are_priced_from_the_request(make_gateway, fake):
    srv = make_gateway(_extra_upstream(fake, '"dall-e-*", "gpt-image-*", "tts-*"'))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.images.generate(model="dall-e-3", prompt="a cat", size="1024x1792", quality="hd")
    assert _spent(srv) == (120_000, 0)  # $0.12: hd 1024x1792
    client.images.generate(prompt="a cat", n=2)  # dall-e-2, 1024x1024 by default
    assert _spent(srv)[0] == 120_000 + 2 * 20_000
    client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 1000)
    assert _spent(srv)[0] == 160_000 + 15_000  # $15 per 1M characters
    # once the budget cannot cover the next image, it is refused before the upstream
    _limit(srv, 22)
    seen = len(fake.model_requests())
    with pytest.raises(openai.RateLimitError) as e:
        client.images.generate(model="dall-e-3", prompt="a cat", size="1024x1792", quality="hd")
    assert e.value.code == "project_spend_limit_exceeded"
    client.images.generate(model="dall-e-3", prompt="a cat")  # $0.04 still fits
    assert len(fake.model_requests()) == seen + 1 and _spent(srv) == (215_000, 0)


def test_unpriceable_spending_endpoints_are_refused_under_money_controls(make_gateway, fake):
    srv = make_gateway(_extra_upstream(fake, '"whisper-*"'))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    # no money control: served; a batch costs 0 here, a transcription the duration its answer reports
    fid = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch").id
    client.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 1000))
    assert _spent(srv) == (100, 0)  # the fake's 1 s (one per 1,000 bytes) at $0.006 a minute
    _limit(srv, 100)
    seen = len(fake.model_requests())
    for call in (
        lambda: client.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"),
        lambda: client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 1000)),
        lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=fid),
    ):
        with pytest.raises(openai.PermissionDeniedError) as e:
            call()
        assert e.value.code == "cost_not_bounded" and "spend limit" in e.value.message
    assert len(fake.model_requests()) == seen


def test_an_exhausted_budget_refuses_every_spending_call_even_free_ones(make_gateway, fake):
    srv = make_gateway('[prices."fake-model"]\ninput = 0\noutput = 2000\n')
    _limit(srv, 1)  # 10000 micro-dollars: exactly one request of 5 tokens at $2000 per 1M
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.chat.completions.create(model="demo-echo", messages=HI)  # free, and there is room
    client.chat.completions.create(model="fake-model", messages=HI, max_tokens=5)
    assert _spent(srv) == (10_000, 0)
    for model in ("demo-echo", "fake-model"):
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model=model, messages=HI, max_tokens=5)
        assert e.value.code == "project_spend_limit_exceeded"


def test_unknown_model_refused_under_money_controls_served_free_without(make_gateway, fake, caplog):
    """Issue 14 item 6: a local model without a price is served at cost 0 (with a warning) until a
    spend limit or credit applies; then it is refused, as is a name no shipped price covers."""
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="keyplane.billing"):
        r = client.chat.completions.create(model="fake-model", messages=HI)
        client.chat.completions.create(model="fake-model", messages=HI)
    assert r.choices[0].message.content and _spent(srv) == (0, 0)
    warned = [m for m in caplog.messages if "`fake-model`" in m and "has no price" in m]
    assert len(warned) == 1 and '"fake-model" = { input = 0, output = 0 }' in warned[0]
    _limit(srv, 100)
    seen = len(fake.model_requests())
    for model in ("fake-model", "gpt-5-turbo-ultra"):  # the latter once inherited gpt-5's price via gpt-5*
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=model, messages=HI)
        assert e.value.code == "model_not_priced" and model in e.value.message
    assert len(fake.model_requests()) == seen
    # one line of config prices a local model
    srv2 = make_gateway('\n[prices."fake-*"]\ninput = 0\noutput = 0\n')
    _limit(srv2, 100)
    OpenAI(base_url=srv2.v1, api_key=srv2.api_key, max_retries=0).chat.completions.create(
        model="fake-model", messages=HI
    )


# --- item 5: dated snapshots share their model's limits and prices -------------------------------------


def test_a_dated_snapshot_shares_its_models_rate_limit_and_price(make_gateway, fake):
    srv = make_gateway()
    admin_sdk(srv).admin.organization.projects.rate_limits.update_rate_limit(
        "rl-gpt-4o-mini", project_id=srv.project_id, max_requests_per_1_minute=2
    )
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)
    client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=HI, max_tokens=5)
    assert _spent(srv)[0] == 2 * COST  # the configured gpt-4o-mini price, not the shipped one
    for model in ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"):
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model=model, messages=HI, max_tokens=5)
        assert e.value.code == "rate_limit_exceeded"
