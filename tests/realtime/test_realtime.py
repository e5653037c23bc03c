"""The Realtime API through keyplane, with the official SDK's realtime client against the fake upstream."""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI, OpenAI

from keyplane.testing.fake_realtime import Usage
from tests.billing.conftest import clean_redis, redis_env
from tests.proxy.conftest import record_settled, wait_for
from tests.realtime.conftest import COST, TEST_MODEL, UPSTREAM_KEY, admin


def _client(srv: Any, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=srv.v1, api_key=key, max_retries=0, timeout=30)


async def _responses(srv: Any, key: str, model: str, n: int) -> list[Any]:
    """n responses in one session: each response.done or error event seen, in order."""
    out: list[Any] = []
    async with _client(srv, key).realtime.connect(model=model) as conn:
        for _ in range(n):
            await conn.response.create()
            async for ev in conn:
                if ev.type in ("response.done", "error"):
                    out.append(ev)
                    break
    return out


def test_a_session_relays_and_records_each_response(make_gateway, fake_rt):
    srv = make_gateway()
    settled = record_settled(srv)
    events = asyncio.run(_responses(srv, srv.api_key, "gpt-realtime", 2))
    assert [e.type for e in events] == ["response.done", "response.done"]
    assert events[0].response.usage.input_tokens == 100 and events[0].response.usage.output_tokens == 40
    # The upstream saw keyplane's provider key, and the output pinned at what was reserved.
    assert fake_rt.auth == [f"Bearer {UPSTREAM_KEY}"]
    assert [e["response"]["max_output_tokens"] for e in fake_rt.of_type("response.create")] == [4096, 4096]
    wait_for(lambda: len(settled) == 2)
    for ctx in settled:
        assert ctx.endpoint == "/v1/realtime" and ctx.model == "gpt-realtime" and ctx.status == 200
        assert (ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens) == (100, 20, 40)
        # by modality: 20 text x $4/M + 20 cached text x $0.4/M + 60 audio x $32/M, 10 text out x $16/M
        # + 30 audio out x $64/M
        assert ctx.cost_micros == 80 + 8 + 1920 + 160 + 1920
        assert ctx.record is not None and ctx.record.kind == "completions"  # where OpenAI reports realtime
    assert settled[0].request_id != settled[1].request_id
    # The Usage API shows them in the completions bucket.
    usage = OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="x", max_retries=0).admin.organization.usage

    def reported() -> tuple[int, int, int, int]:
        page = usage.completions(start_time=int(time.time()) - 3600, bucket_width="1h", group_by=["model"])
        rows = [r for b in page.data for r in b.results if r.model == "gpt-realtime"]
        return (
            sum(r.num_model_requests for r in rows),
            sum(r.input_tokens for r in rows),
            sum(r.input_cached_tokens for r in rows),
            sum(r.output_tokens for r in rows),
        )

    wait_for(lambda: reported() == (2, 200, 40, 80), timeout=15)


def test_refused_before_the_upstream_without_a_valid_key_or_scope(make_gateway, fake_rt):
    srv = make_gateway()
    ro = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "ro", "permissions": "read_only"})

    async def status(key: str, model: str = "gpt-realtime") -> int:
        try:
            await _responses(srv, key, model, 1)
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code
        return 101

    assert asyncio.run(status("sk-kp-proj-not-a-real-key")) == 401
    assert asyncio.run(status(ro["value"])) == 403
    assert asyncio.run(status(srv.api_key, "o-model-nobody-serves")) == 404
    assert fake_rt.auth == []  # nothing reached the upstream


def test_the_browser_subprotocol_form_authenticates(make_gateway, fake_rt):
    srv = make_gateway()
    url = srv.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"

    async def go() -> str | None:
        async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{srv.api_key}"]) as ws:
            first = await ws.recv()
            assert '"session.created"' in first
            return ws.subprotocol

    assert asyncio.run(go()) == "realtime"
    assert fake_rt.auth == [f"Bearer {UPSTREAM_KEY}"]


@pytest.mark.slow  # waits out the drain of a response the upstream never finishes (5 s)
def test_revoking_the_key_cuts_a_live_session_and_settles_its_response(make_gateway, fake_rt):
    srv = make_gateway()
    settled = record_settled(srv)
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "victim"})
    fake_rt.hold = True

    seen: list[Any] = []

    async def go() -> None:
        async with _client(srv, key["value"]).realtime.connect(model="gpt-realtime") as conn:
            await conn.response.create()
            async for ev in conn:
                seen.append(ev)
                if ev.type == "response.created":
                    await asyncio.to_thread(admin, srv, "POST", f"/api_keys/{key['id']}/revoke", {"reason": "leaked"})

    with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
        asyncio.run(asyncio.wait_for(go(), 20))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008  # policy violation
    errs = [e for e in seen if e.type == "error"]
    assert len(errs) == 1 and "revoked" in errs[0].error.message and errs[0].error.code == "invalid_api_key"
    wait_for(lambda: len(settled) == 1)
    assert settled[0].status == 499 and settled[0].usage_estimated and settled[0].completion_tokens == 4096
    # the key is refused on a new session
    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(_responses(srv, key["value"], "gpt-realtime", 1))


@pytest.mark.parametrize("limiter", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_budget_for_five_responses_lets_exactly_five_through_under_a_race(make_gateway, fake_rt, limiter):
    # A prefix of its own: the billing tests' end-of-session sweep (kptest-<worker>-*) must not reach it.
    prefix = f"kprealtime-{secrets.token_hex(4)}"
    srv = make_gateway(**(redis_env(prefix) if limiter == "redis" else {}))
    admin(
        srv,
        "POST",
        f"/projects/{srv.project_id}/spend_limit",
        {"currency": "USD", "interval": "month", "threshold_amount": 4},
    )

    async def one() -> str:
        try:
            events = await _responses(srv, srv.api_key, TEST_MODEL, 1)
        except websockets.exceptions.ConnectionClosed:
            return "closed"
        if not events:
            return "none"
        ev = events[0]
        return "ok" if ev.type == "response.done" else str(ev.error.code)

    async def race() -> collections.Counter[str]:
        return collections.Counter(await asyncio.gather(*[one() for _ in range(12)]))

    try:
        counts = asyncio.run(race())
        assert counts == {"ok": 5, "project_spend_limit_exceeded": 7}
        assert len(fake_rt.of_type("response.create")) == 5  # the refused ones never reached the upstream
        assert all(e["response"]["max_output_tokens"] == 5 for e in fake_rt.of_type("response.create"))
        b = srv.app.runtime.features.billing
        wait_for(lambda: srv.call(b.spent("project", srv.project_id)) == (5 * COST, 0))
    finally:
        if limiter == "redis":
            srv.stop()
            clean_redis(prefix)


def test_responses_the_upstream_starts_itself_are_admitted_or_cancelled(make_gateway, fake_rt):
    """Server VAD creates responses with no response.create: each is admitted on response.created, and
    once the budget refuses one it is cancelled at the upstream and the session cut."""
    srv = make_gateway()
    settled = record_settled(srv)
    admin(
        srv,
        "POST",
        f"/projects/{srv.project_id}/spend_limit",
        {"currency": "USD", "interval": "month", "threshold_amount": 2},
    )  # room for 2 responses

    seen: list[Any] = []

    async def go() -> None:
        async with _client(srv, srv.api_key).realtime.connect(model=TEST_MODEL) as conn:
            for _ in range(3):
                await conn.input_audio_buffer.commit()
                async for ev in conn:
                    seen.append(ev)
                    if ev.type in ("response.done", "error"):
                        break
            async for ev in conn:  # then the session is cut
                seen.append(ev)

    with pytest.raises(websockets.exceptions.ConnectionClosedError):
        asyncio.run(asyncio.wait_for(go(), 20))
    kinds = [e.type for e in seen if e.type in ("response.done", "error")]
    assert kinds == ["response.done", "response.done", "error"]
    assert seen[-1].error.code == "project_spend_limit_exceeded"
    wait_for(lambda: len(fake_rt.of_type("response.cancel")) >= 1)  # the fake records it on its own thread
    wait_for(lambda: len(settled) >= 2)
    assert [c.status for c in settled][:2] == [200, 200]


def test_a_response_create_hidden_in_json_escapes_is_still_admitted(make_gateway, fake_rt):
    srv = make_gateway()
    settled = record_settled(srv)
    url = srv.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"

    async def go() -> None:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {srv.api_key}"}) as ws:
            await ws.recv()  # session.created
            await ws.send('{"type":"response\\u002ecreate","response":{"max_output_tokens":"inf"}}')
            while '"response.done"' not in await ws.recv():
                pass

    asyncio.run(asyncio.wait_for(go(), 20))
    assert [e["response"]["max_output_tokens"] for e in fake_rt.of_type("response.create")] == [4096]
    wait_for(lambda: len(settled) == 1)
    assert settled[0].completion_tokens == 40


def test_the_session_output_limit_is_pinned_to_what_a_response_reserves(make_gateway, fake_rt):
    """A client raising the session's max_output_tokens (for the responses server VAD starts) is held to
    the reservation: keyplane pins it on connect and caps every session.update."""
    srv = make_gateway()
    settled = record_settled(srv)

    async def go() -> list[str]:
        got: list[str] = []
        async with _client(srv, srv.api_key).realtime.connect(model=TEST_MODEL) as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": "inf"})
            await conn.input_audio_buffer.commit()
            async for ev in conn:
                got.append(ev.type)
                if ev.type == "response.done":
                    break
        return got

    got = asyncio.run(asyncio.wait_for(go(), 20))
    assert got[0] == "session.created" and got.count("session.updated") == 1  # keyplane's own pin is not relayed
    assert [e["session"]["max_output_tokens"] for e in fake_rt.of_type("session.update")] == [5, 5]
    wait_for(lambda: len(settled) == 1)
    assert settled[0].completion_tokens == 5 and settled[0].cost_micros == COST


def test_what_keyplane_cannot_govern_is_refused_not_dropped(make_gateway, fake_rt):
    """Switching the model mid-session, input transcription (billed apart), joining a foreign call."""
    srv = make_gateway()

    async def go() -> list[Any]:
        got: list[Any] = []
        async with _client(srv, srv.api_key).realtime.connect(model="gpt-realtime-mini") as conn:
            await conn.session.update(session={"type": "realtime", "model": "gpt-realtime"})
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}
            )
            await conn.response.create()
            async for ev in conn:
                got.append(ev)
                if ev.type == "response.done":
                    break
        return got

    got = asyncio.run(asyncio.wait_for(go(), 20))
    errs = [e.error.param for e in got if e.type == "error"]
    assert errs == ["session.model", "session.audio.input.transcription"]
    assert fake_rt.of_type("session.update") == [
        {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 4096}}
    ]  # only keyplane's own pin went through
    assert fake_rt.paths == ["/v1/realtime?model=gpt-realtime-mini"]

    async def status(query: str) -> int:
        url = srv.base_url.replace("http://", "ws://") + "/v1/realtime?" + query
        try:
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {srv.api_key}"}):
                return 101
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    assert asyncio.run(status("model=gpt-realtime&call_id=rtc_123")) == 400
    assert asyncio.run(status("model=gpt-realtime&intent=transcription")) == 400


def test_archiving_the_project_cuts_its_idle_sessions(make_gateway, fake_rt):
    srv = make_gateway()

    async def go() -> list[Any]:
        seen: list[Any] = []
        async with _client(srv, srv.api_key).realtime.connect(model="gpt-realtime") as conn:
            await asyncio.to_thread(admin, srv, "POST", f"/projects/{srv.project_id}/archive")
            try:
                async for ev in conn:  # nothing more from the upstream: the idle watch cuts it
                    seen.append(ev)
            except websockets.exceptions.ConnectionClosedError as e:
                assert e.rcvd is not None and e.rcvd.code == 1008
                return seen
        raise AssertionError("the session was not cut")

    seen = asyncio.run(asyncio.wait_for(go(), 20))
    assert [e.error.code for e in seen if e.type == "error"] == ["project_archived"]


def test_a_client_leaving_mid_response_still_pays_for_it(make_gateway, fake_rt):
    """The response is cancelled at the upstream and settled with the usage its response.done reports."""
    srv = make_gateway()
    settled = record_settled(srv)
    fake_rt.hold = fake_rt.honour_cancel = True

    async def go() -> None:
        async with _client(srv, srv.api_key).realtime.connect(model="gpt-realtime") as conn:
            await conn.response.create()
            async for ev in conn:
                if ev.type == "response.created":
                    break  # and leave

    asyncio.run(asyncio.wait_for(go(), 20))
    wait_for(lambda: len(settled) == 1)
    assert len(fake_rt.of_type("response.cancel")) == 1
    ctx = settled[0]
    assert (ctx.status, ctx.prompt_tokens, ctx.completion_tokens, ctx.usage_estimated) == (200, 100, 40, False)
    assert ctx.cost_micros > 0


def test_a_response_the_upstream_refuses_costs_nothing(make_gateway, fake_rt):
    srv = make_gateway()
    settled = record_settled(srv)

    async def go() -> list[str]:
        got: list[str] = []
        async with _client(srv, srv.api_key).realtime.connect(model="gpt-realtime") as conn:
            await conn.response.create(event_id="evt_bad", response={"metadata": {"fake_error": "1"}})
            await conn.response.create()
            async for ev in conn:
                got.append(ev.type)
                if ev.type == "response.done":
                    break
        return got

    got = asyncio.run(asyncio.wait_for(go(), 20))
    assert got[-3:] == ["error", "response.created", "response.done"]
    wait_for(lambda: len(settled) == 2)
    refused, done = settled
    assert (refused.status, refused.error, refused.cost_micros) == (400, "invalid_value", 0)
    assert not refused.usage_estimated
    assert (done.status, done.completion_tokens) == (200, 40)


def test_each_modality_is_priced_at_its_own_rate(make_gateway, fake_rt):
    """Text and audio input, cached text and audio input, text and audio output: each at the shipped table's
    rate for the model; image input and a usage without details at the dearest (audio) rates."""
    srv = make_gateway()
    settled = record_settled(srv)
    b = srv.app.runtime.features.billing
    cases = [
        # gpt-realtime: text $4 / cached $0.40 / out $16, audio $32 / cached $0.40 / out $64 (per 1M tokens)
        (
            "gpt-realtime",
            Usage(text_in=1000, audio_in=2000, cached_text=400, cached_audio=500, text_out=300, audio_out=700),
            (600 * 4 + 400 * 0.4 + 1500 * 32 + 500 * 0.4, 300 * 16 + 700 * 64),
        ),
        # gpt-realtime-mini: text $0.60 / cached $0.06 / out $2.40, audio $10 / cached $0.30 / out $20
        (
            "gpt-realtime-mini",
            Usage(text_in=1000, audio_in=2000, cached_text=400, cached_audio=500, text_out=300, audio_out=700),
            (600 * 0.6 + 400 * 0.06 + 1500 * 10 + 500 * 0.3, 300 * 2.4 + 700 * 20),
        ),
        # image input is not a text or audio rate: at the dearest input rate
        (
            "gpt-realtime",
            Usage(text_in=100, audio_in=0, cached_text=0, image_in=50, text_out=10, audio_out=0),
            (100 * 4 + 50 * 32, 10 * 16),
        ),
        # no details: every token at the audio rates, never less than the provider bills
        (
            "gpt-realtime",
            Usage(text_in=1000, audio_in=2000, cached_text=400, text_out=300, audio_out=700, details=False),
            (3000 * 32, 1000 * 64),
        ),
    ]
    total = 0
    for i, (model, usage, (cost_in, cost_out)) in enumerate(cases):
        fake_rt.usage = usage
        events = asyncio.run(_responses(srv, srv.api_key, model, 1))
        assert [e.type for e in events] == ["response.done"]
        wait_for(lambda i=i: len(settled) == i + 1)
        ctx = settled[i]
        want_in, want = round(cost_in), round(cost_in + cost_out)
        assert (ctx.model, ctx.cost_micros, ctx.cost_input_micros) == (model, want, want_in), (i, ctx.modalities)
        assert ctx.record is not None and (ctx.record.cost_micros, ctx.record.cost_input_micros) == (want, want_in)
        total += want
    # 100360 + 30254 + 2160 + 160000 micro-dollars, in the project's spend once settled
    assert total == 100_360 + 30_254 + 2_160 + 160_000
    wait_for(lambda: srv.call(b.spent("project", srv.project_id)) == (total, 0))
    listed = {p["model"]: p for p in admin(srv, "GET", "/prices")["data"]}
    assert {k: listed["gpt-realtime"][k] for k in ("input", "output", "audio_input", "audio_output")} == {
        "input": 4,
        "output": 16,
        "audio_input": 32,
        "audio_output": 64,
    }
    assert "audio_input" not in listed["gpt-4o-mini"]


def test_an_ip_allowlist_set_during_a_session_cuts_it(make_gateway, fake_rt):
    """A project allowlist that leaves out the session's address, set after it opened, ends it (the session
    does not keep the authority it connected with)."""
    srv = make_gateway()

    async def go() -> list[Any]:
        seen: list[Any] = []
        async with _client(srv, srv.api_key).realtime.connect(model="gpt-realtime") as conn:
            await asyncio.to_thread(
                admin, srv, "POST", f"/projects/{srv.project_id}/ip_allowlist", {"cidrs": ["10.9.8.0/24"]}
            )
            try:
                async for ev in conn:  # nothing more from the upstream: the idle watch cuts it
                    seen.append(ev)
            except websockets.exceptions.ConnectionClosedError as e:
                assert e.rcvd is not None and e.rcvd.code == 1008
                return seen
        raise AssertionError("the session was not cut")

    seen = asyncio.run(asyncio.wait_for(go(), 20))
    assert [e.error.code for e in seen if e.type == "error"] == ["ip_not_allowed"]
