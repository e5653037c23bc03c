"""Images, audio and moderations end to end through the official SDK: the Usage API's images,
audio_speeches, audio_transcriptions and moderations buckets, the Costs API, and a budget for N
requests letting exactly N through under a race (issue 17 items 2, 3, 6)."""

from __future__ import annotations

import asyncio
import collections
import time
import warnings
from collections.abc import Awaitable, Callable

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.billing.conftest import admin_sdk, billing_of
from tests.billing.conftest import set_spend_limit as _limit
from tests.endpoints.conftest import media
from tests.support import until_the_kill_switch_refuses
from tests.usage.support import drain


def _spent(srv) -> tuple[int, int]:
    return srv.call(billing_of(srv).spent("project", srv.project_id))


def _one(results):
    rows = [r for b in results.data for r in b.results]
    assert len(rows) == 1, rows
    return rows[0]


def test_images_audio_and_moderations_reach_their_usage_buckets(make_gateway, fake):
    srv = make_gateway(media(fake))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    admin = admin_sdk(srv)
    start = int(time.time()) - 5
    # images: 3 dall-e-3 ($0.04 each) + 2 dall-e-2 ($0.02 each) + an edit (multipart) of 2 gpt-image-1
    r = client.images.generate(model="dall-e-3", prompt="a cat", n=1)
    assert len(r.data) == 1
    client.images.generate(model="dall-e-3", prompt="a cat")
    client.images.generate(model="dall-e-3", prompt="a dog")
    client.images.generate(model="dall-e-2", prompt="a cat", n=2)
    client.images.edit(model="dall-e-2", image=("in.png", b"\x89PNG" + b"0" * 100), prompt="hat", n=2)
    # speech: 1000 + 500 characters at $15 per 1M
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 1000)
    assert audio.content.startswith(b"ID3")
    client.audio.speech.create(model="tts-1", voice="alloy", input="y" * 500)
    # transcription: the fake reports a duration of 1 s per 1000 bytes (12 s) and translation 3 s
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 12_000))
    assert t.text == "fake"
    with warnings.catch_warnings():  # the SDK marks translations deprecated; the endpoint still bills
        warnings.simplefilter("ignore", DeprecationWarning)
        client.audio.translations.create(model="whisper-1", file=("b.mp3", b"x" * 3_000))
    # moderations: free, counted
    mod = client.moderations.create(model="omni-moderation-latest", input="hello there friend")
    assert mod.results[0].flagged is False
    drain(srv)

    kw = {"start_time": start, "bucket_width": "1d", "group_by": ["model", "project_id"]}
    images = admin.admin.organization.usage.images(**kw)
    got = {(r.model, r.images, r.num_model_requests) for b in images.data for r in b.results}
    assert got == {("dall-e-3", 3, 3), ("dall-e-2", 4, 2)}
    assert all(
        r.project_id == srv.project_id and r.object == "organization.usage.images.result"
        for b in images.data
        for r in b.results
    )
    speech = _one(admin.admin.organization.usage.audio_speeches(**kw))
    assert (speech.model, speech.characters, speech.num_model_requests) == ("tts-1", 1500, 2)
    tr = _one(admin.admin.organization.usage.audio_transcriptions(**kw))
    assert (tr.model, tr.seconds, tr.num_model_requests) == ("whisper-1", 15, 2)
    mo = _one(admin.admin.organization.usage.moderations(**kw))
    assert mo.model == "omni-moderation-latest" and mo.num_model_requests == 1 and mo.input_tokens > 0
    # nothing of it is in the completions bucket
    assert not [r for b in admin.admin.organization.usage.completions(start_time=start).data for r in b.results]

    # Costs: 3 x $0.04 + 4 x $0.02 images, 1500 characters at $15/1M, 12 s + 3 s of whisper at $0.006/minute
    want = 3 * 40_000 + 4 * 20_000 + 22_500 + 1_200 + 300
    costs = admin.admin.organization.usage.costs(start_time=start, group_by=["project_id"])
    total = sum(r.amount.value for b in costs.data for r in b.results)
    assert round(total * 1e6) == want
    assert _spent(srv) == (want, 0)

    # filters keyplane cannot apply are refused, not ignored
    with pytest.raises(openai.BadRequestError):
        admin.admin.organization.usage.images(start_time=start, sources=["image.edit"])


def test_gpt_image_units_and_price(make_gateway, fake):
    """gpt-image-1 is reserved per image by quality and size plus its prompt's tokens, billed the usage its answer
    reports; counted in images."""
    srv = make_gateway(media(fake))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    start = int(time.time()) - 5
    client.images.generate(model="gpt-image-1", prompt="a cat", n=2, quality="low", size="1024x1024")
    drain(srv)
    row = _one(admin_sdk(srv).admin.organization.usage.images(start_time=start, group_by=["model"]))
    assert (row.model, row.images, row.num_model_requests) == ("gpt-image-1", 2, 1)
    # Billed the usage the answer reports (the fake's: 50 text tokens, 272 image output tokens per low 1024x1024
    # image), read off the answer as it passes: 50 x $5 + 544 x $40 per 1M (the list price, $0.011 an image, is
    # what was reserved).
    assert _spent(srv)[0] == 250 + 2 * 272 * 40


async def _race(srv, n: int, call: Callable[[AsyncOpenAI], Awaitable[object]]) -> collections.Counter:
    client = AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0, timeout=60)

    async def one() -> str:
        try:
            await call(client)
            return "ok"
        except openai.RateLimitError as e:
            return str(e.code)

    try:
        return collections.Counter(await asyncio.gather(*[one() for _ in range(n)]))
    finally:
        await client.close()


@pytest.mark.parametrize("what", ["image", "speech"])
def test_a_budget_for_n_requests_lets_exactly_n_through_under_a_race(make_gateway, fake, what):
    srv = make_gateway(media(fake))
    if what == "image":  # dall-e-3 standard 1024x1024: $0.04; a $1 budget is 25 images
        per, ok = 40_000, 25

        def call(c: AsyncOpenAI) -> Awaitable[object]:
            return c.images.generate(model="dall-e-3", prompt="a cat")
    else:  # 2000 characters of tts-1: $0.03; a $1 budget is 33 of them
        per, ok = 30_000, 33

        def call(c: AsyncOpenAI) -> Awaitable[object]:
            return c.audio.speech.create(model="tts-1", voice="alloy", input="z" * 2000)

    _limit(srv, 100)
    before = len(fake.model_requests())
    counts = asyncio.run(_race(srv, 60, call))
    assert counts == {"ok": ok, "project_spend_limit_exceeded": 60 - ok}
    assert len(fake.model_requests()) - before == ok
    assert _spent(srv) == (ok * per, 0)


def test_moderations_pass_an_exhausted_budget_and_are_counted(make_gateway, fake):
    """Moderation is free: it is not a spending call, so a used-up budget does not stop it."""
    srv = make_gateway(media(fake))
    _limit(srv, 4)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.images.generate(model="dall-e-3", prompt="a cat")  # $0.04: the whole budget
    with pytest.raises(openai.RateLimitError):
        client.images.generate(model="dall-e-3", prompt="a cat")
    client.moderations.create(model="omni-moderation-latest", input=["one", "two"])
    assert _spent(srv) == (40_000, 0)


GUARD = (
    '\n[[guard.rules]]\nname = "image-ceiling"\nkind = "ceiling"\nscope = "key"\nwindow = "1h"\n'
    'threshold = 0.1\nmetric = "cost_usd"\nmode = "suspend"\n'
)


@pytest.mark.parametrize("what", ["image", "web_search", "speech", "transcription"])
def test_the_kill_switch_sees_images_audio_and_tool_calls(make_gateway, fake, what):
    """A cost ceiling of $0.10 per hour: images at $0.04, web searches at $0.025, speech at $0.06 (4,000 characters
    of tts-1) or transcriptions at $0.06 (the fake reports 600 s for 600,000 bytes, whisper-1) trip it."""
    extra = '[prices."fake-tools"]\ninput = 0\noutput = 0\nmax_output = 5\ncontext_window = 100\n'
    srv = make_gateway(media(fake) + extra + GUARD)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    for _ in range({"image": 3, "web_search": 5, "speech": 2, "transcription": 2}[what]):  # $0.12, $0.125, $0.12
        if what == "image":
            client.images.generate(model="dall-e-3", prompt="a cat")
        elif what == "speech":
            client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4000)
        elif what == "transcription":
            client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 600_000))
        else:
            client.responses.create(
                model="fake-tools", input="hi", tools=[{"type": "web_search_preview"}], max_tool_calls=1
            )
    # The probe is free (a moderation): only the calls above can have crossed the ceiling.
    until_the_kill_switch_refuses(srv, lambda: client.moderations.create(model="omni-moderation-latest", input="hi"))
    assert srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]].suspended_at is not None


def test_a_transcription_is_billed_the_duration_its_answer_reports(make_gateway, fake, monkeypatch):
    """Reserved at 8 kbit/s (240,000 bytes: 4 minutes), billed the seconds the answer reports, shorter or
    longer: 240 s at 8 kbit/s, 60 s at 32 kbit/s."""
    from keyplane.testing import answers_media

    srv = make_gateway(media(fake))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.audio.transcriptions.create(model="whisper-1", file=("a.ogg", b"x" * 240_000))
    assert _spent(srv) == (4 * 6_000, 0)
    monkeypatch.setattr(answers_media, "AUDIO_BYTES_PER_SECOND", 4_000)
    client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 240_000))
    assert _spent(srv) == (5 * 6_000, 0)


def test_a_transcription_whose_answer_reports_no_duration_is_billed_its_reservation(make_gateway, fake):
    """`response_format=text` answers plain text with no usage: billed what was reserved, the most audio
    the file can hold (8 kbit/s), so no bitrate makes it cheaper than the provider's bill."""
    srv = make_gateway(media(fake))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.ogg", b"x" * 130_000), response_format="text")
    assert text.strip() == "fake"
    assert _spent(srv) == (3 * 6_000, 0)  # 130,000 bytes: 2.17 minutes at 8 kbit/s, 3 started minutes


def test_a_transcription_reserves_at_most_the_models_longest_audio():
    """gpt-4o-transcribe takes at most 1,500 s (its price entry's max_seconds; the API refuses a longer file):
    a 24 MB upload reserves 25 minutes, not the 400 that 8 kbit/s makes of it. whisper-1 has no such bound."""
    from keyplane.billing.prices import PriceTable
    from keyplane.billing.quote import quote

    prices = PriceTable.from_config({})

    def reserved(model: str, size: int) -> int:
        q = quote(prices, "/v1/audio/transcriptions", model, b"x" * size, None, False, None, 4096)
        return q.cost

    assert reserved("gpt-4o-transcribe-diarize", 24_000_000) == 24 * 6_000  # 1,400 s: 24 started minutes
    assert reserved("gpt-4o-transcribe-diarize", 60_001) == 2 * 6_000
    assert reserved("whisper-1", 24_000_000) == 400 * 6_000
    # token-priced: its context window of audio and its output limit, whatever the file's size
    assert reserved("gpt-4o-transcribe", 24_000_000) == reserved("gpt-4o-transcribe", 10) == 16_000 * 6 + 2_000 * 10
    assert reserved("gpt-4o-mini-transcribe", 10) == 16_000 * 3 + 2_000 * 5


def test_a_token_priced_transcription_is_served_under_a_spend_limit_and_billed_its_tokens(make_gateway, fake):
    """gpt-4o-transcribe is bounded (16,000 audio tokens at $6/1M + 2,000 out at $10/1M: $0.116 reserved), so a
    spend limit serves it (whisper-1, priced per minute of a duration no file size bounds, is refused there).
    The fake reports 10 audio tokens a second (150,000 bytes: 1,500), 5 text tokens in and 20 out: $0.009213.
    A $0.20 limit admits while spend + $0.116 fits: 10 of them; the 11th is refused before the upstream."""
    srv = make_gateway(media(fake))
    _limit(srv, 20)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    per = -(-(5 * 2_500_000 + 1_500 * 6_000_000 + 20 * 10_000_000) // 1_000_000)
    assert per == 9_213
    for _ in range(10):
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.ogg", b"x" * 150_000))
    seen = len(fake.model_requests())
    with pytest.raises(openai.RateLimitError) as e:
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.ogg", b"x" * 150_000))
    assert e.value.code == "project_spend_limit_exceeded"
    assert len(fake.model_requests()) == seen
    assert _spent(srv) == (10 * per, 0)
    with pytest.raises(openai.PermissionDeniedError) as d:
        client.audio.transcriptions.create(model="whisper-1", file=("a.ogg", b"x" * 1_000))
    assert d.value.code == "cost_not_bounded"


def test_a_token_priced_transcription_without_usage_is_billed_its_bound_and_races_stay_under_the_limit(
    make_gateway, fake
):
    """`response_format=text` reports no tokens (nor does a `stream`): billed the bound ($0.116), since its prompt
    and output are billed by the provider too and no per-minute estimate bounds them. Then twelve at once under a
    $0.30 limit: never more admitted than the bound allows."""
    srv = make_gateway(media(fake))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    text = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.ogg", b"x" * 150_000), response_format="text"
    )
    assert text.strip() == "fake"
    bound = 16_000 * 6 + 2_000 * 10
    assert _spent(srv) == (bound, 0)
    _limit(srv, 30)

    def call(c: AsyncOpenAI) -> Awaitable[object]:
        return c.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.ogg", b"x" * 150_000))

    counts = asyncio.run(_race(srv, 12, call))
    assert set(counts) <= {"ok", "project_spend_limit_exceeded"} and counts["ok"] >= 1
    assert _spent(srv)[0] == bound + counts["ok"] * 9_213 <= 300_000
