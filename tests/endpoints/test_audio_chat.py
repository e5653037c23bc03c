"""Audio models on chat completions, end to end through the official SDK (issue 17): audio tokens in and out
priced at the audio rates and text at the text rates, the reservation of a request that asks for audio
bounding its audio output (a budget cannot be overspent by asking for audio), and the Usage API's
completions bucket reporting input_audio_tokens / output_audio_tokens."""

from __future__ import annotations

import asyncio
import collections
import time

import openai
from openai import AsyncOpenAI, OpenAI

from tests.billing.conftest import admin_http, admin_sdk, billing_of
from tests.usage.support import drain

AUDIO = {"voice": "alloy", "format": "wav"}
SPOKEN = [{"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]


def _spent(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


def test_audio_tokens_are_priced_at_the_audio_rates_and_reported_in_the_usage_api(make_gateway, fake):
    srv = make_gateway()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    # Text only, on an audio model: 1 prompt and 5 output tokens at the text rates ($2.50 / $10 per 1M).
    r = client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=50
    )
    assert r.choices[0].message.audio is None
    assert _spent(srv) == 53  # 52.5 micro-dollars, rounded up
    # Audio in and out: 1 text + 50 audio prompt tokens, 5 text + 100 audio output tokens ($40 / $80 per 1M audio).
    r = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio=AUDIO,
        messages=[{"role": "user", "content": SPOKEN}],
        max_completion_tokens=105,
    )
    assert r.choices[0].message.audio is not None and r.usage.completion_tokens_details.audio_tokens == 100
    one = 10_053  # (1 x 2.5 + 50 x 40 + 5 x 10 + 100 x 80) micro-dollars, rounded up
    assert _spent(srv) == 53 + one
    # The same streamed: the usage chunk's details are read too.
    stream = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio=AUDIO,
        messages=[{"role": "user", "content": SPOKEN}],
        max_completion_tokens=105,
        stream=True,
    )
    assert all(c.usage is None for c in stream)  # keyplane asked for the usage chunk; the client did not
    assert _spent(srv) == 53 + 2 * one
    drain(srv)

    admin = admin_sdk(srv)
    rows = [
        row
        for b in admin.admin.organization.usage.completions(start_time=start, group_by=["model"]).data
        for row in b.results
    ]
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row.model, row.num_model_requests, row.input_tokens, row.output_tokens) == (
        "gpt-4o-audio-preview",
        3,
        1 + 2 * 51,
        5 + 2 * 105,
    )
    assert (row.input_audio_tokens, row.output_audio_tokens) == (100, 200)
    costs = admin.admin.organization.usage.costs(start_time=start, group_by=["line_item"])
    assert round(sum(r.amount.value for b in costs.data for r in b.results) * 1e6) == 53 + 2 * one


FAKE_AUDIO = (
    '[prices."fake-audio"]\ninput = 0\noutput = 1\naudio_input = 0\naudio_output = 100\n'
    "max_output = 100\ncontext_window = 1000\n"
)


def test_asking_for_audio_cannot_spend_past_a_hard_limit(make_gateway, fake):
    """$1 of text output and $100 of audio output per 1M tokens: a request with max_completion_tokens=100 that
    asks for audio reserves 100 x $100/1M = 10,000 micro-dollars and costs 5 x 1 + 95 x 100 = 9,505. Under a
    limit of 10 cents, exactly 10 of 30 concurrent requests pass (at the text rate, all 30 would: 2.85x the
    limit); a text-only request still fits in what is left (it reserves 100 x $1/1M)."""
    srv = make_gateway(FAKE_AUDIO)
    with admin_http(srv) as h:
        r = h.post(
            f"/projects/{srv.project_id}/spend_limit",
            json={"currency": "USD", "interval": "month", "threshold_amount": 10},
        )
        assert r.status_code == 200, r.text

    async def race() -> collections.Counter:
        client = AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0, timeout=60)

        async def one() -> str:
            try:
                await client.chat.completions.create(
                    model="fake-audio",
                    modalities=["text", "audio"],
                    audio=AUDIO,
                    messages=[{"role": "user", "content": "hi"}],
                    max_completion_tokens=100,
                )
                return "ok"
            except openai.RateLimitError as e:
                return str(e.code)

        try:
            return collections.Counter(await asyncio.gather(*[one() for _ in range(30)]))
        finally:
            await client.close()

    assert asyncio.run(race()) == {"ok": 10, "project_spend_limit_exceeded": 20}
    assert _spent(srv) == 10 * 9_505
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.chat.completions.create(
        model="fake-audio", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=100
    )
    assert _spent(srv) == 10 * 9_505 + 5
    # A key given twice, or `audio` set without modalities, is read as asking for audio: refused here.
    try:
        client.chat.completions.create(
            model="fake-audio",
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=100,
            extra_body={"audio": AUDIO},
        )
        raise AssertionError("an audio request passed a budget with no room for its audio output")
    except openai.RateLimitError as e:
        assert e.code == "project_spend_limit_exceeded"


def test_the_output_is_reserved_at_the_audio_rate_whenever_audio_may_be_written():
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.quote_tokens import _output_priced

    price = PriceTable.from_config({}).lookup("gpt-4o-audio-preview")
    text, audio = 10_000_000, 80_000_000  # per 1M output tokens, in micro-dollars
    cases = {
        b'{"messages": []}': text,
        b'{"modalities": ["text"]}': text,
        b'{"messages": [{"role": "user", "content": "modalities audio"}]}': text,
        b'{"modalities": ["text", "audio"]}': audio,
        b'{"modalit\\u0069es": ["audio"]}': audio,  # an escaped key reads as the key
        b'{"modalities": ["text"], "modalities": ["audio"]}': audio,  # parsers disagree on a repeated key
        b'{"audio": {"voice": "alloy"}}': audio,
        b'{"modalities": "audio"}': audio,
        b"[1, 2]": audio,
        b"not json": audio,
    }
    for body, want in cases.items():
        assert _output_priced(price, "/v1/chat/completions", body).top_output == want, body
    assert _output_priced(price, "/v1/responses", b"{}").top_output == audio  # elsewhere: the dearest
