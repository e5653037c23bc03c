"""A large transcription priced per minute, sent by the official Python SDK (`model` before the file), under money
controls (issue 17): keyplane spools it before admission, measures its WAV, reserves and bills its length, and
sends it from the spool (billing/admission_audio.py). Without money controls the same upload still streams.

The gateway runs in this process: the tests see how each upload went upstream (``Upload.iterate``) and how much
of its file the client had handed over by then. The fake upstream answers ``text`` with no duration, so keyplane
bills the length it measured.
"""

from __future__ import annotations

import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

from keyplane.proxy import uploads
from tests.billing.conftest import admin_http, billing_of
from tests.billing.conftest import set_spend_limit as _limit
from tests.billing.test_audio_length_gateway import PER_SECOND, wav

MB = 1024 * 1024
WAV50 = wav(50, rate=16000, width=2)  # 50 s, 1.6 MB: above the 1 MiB a body is read whole under
COST50 = 50 * PER_SECOND  # 5,000 micro-dollars: two fit in a 1-cent limit
ESTIMATE50 = -(-len(WAV50) // 60_000) * 6_000  # what its size alone would reserve (27 minutes at 8 kbit/s)


def _upstream(fake) -> str:
    return (
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = ["whisper-*"]\n'
    )


def _gw(make_gateway, fake, **env: str):
    return make_gateway(_upstream(fake), KEYPLANE_MAX_BODY_BYTES=str(3 * MB), **env)


def _client(srv, **kw) -> OpenAI:
    return OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0, **kw)


def _spent(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


def _received(fake) -> list:
    return [r for r in fake.model_requests() if r.path == "/v1/audio/transcriptions"]


class Reader(io.BytesIO):
    """The file as the SDK hands it to httpx, which reads it in chunks as it sends the body: ``sent`` counts what
    it took. With ``hold_at``, a read past that many bytes waits (up to 10 s) for the gateway to start sending
    the body upstream."""

    def __init__(self, data: bytes, hold_at: int | None = None) -> None:
        super().__init__(data)
        self.total = len(data)
        self.sent = 0
        self.hold_at = hold_at
        self.upstream_started = threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        if self.hold_at is not None and self.sent >= self.hold_at:
            self.upstream_started.wait(10)
        chunk = super().read(size)
        self.sent += len(chunk)
        return chunk


@pytest.fixture
def went(monkeypatch):
    """(how each upload went upstream, 'stream' or 'spool'; how many bytes of its file the client had sent then)
    for the Reader given to ``went.reader``; and each spool_measured call."""

    class Seen(list):
        reader: Reader | None = None
        spooled: list[bool] = []

    seen = Seen()
    seen.spooled = []
    iterate, spool = uploads.Upload.iterate, uploads.Upload.spool_measured

    def spy_iterate(self):  # type: ignore[no-untyped-def]
        r = seen.reader
        seen.append(("stream" if self.streaming else "spool", r.sent if r is not None else None))
        if r is not None:
            r.upstream_started.set()
        return iterate(self)

    async def spy_spool(self):  # type: ignore[no-untyped-def]
        seen.spooled.append(True)
        await spool(self)

    monkeypatch.setattr(uploads.Upload, "iterate", spy_iterate)
    monkeypatch.setattr(uploads.Upload, "spool_measured", spy_spool)
    return seen


def test_the_sdk_transcribes_a_large_wav_under_a_spend_limit_reserved_by_its_length(make_gateway, fake, went):
    srv = _gw(make_gateway, fake)
    client = _client(srv)
    _limit(srv, 1)  # 10,000 micro-dollars: two 50 s files, far less than one file's size-based estimate
    assert ESTIMATE50 > 10_000
    went.reader = Reader(WAV50)
    out = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", went.reader), response_format="text")
    assert "fake" in out
    assert went == [("spool", len(WAV50))]  # held whole before it went upstream
    (got,) = _received(fake)
    assert WAV50 in got.body and got.headers.get("content-length") == str(len(got.body))
    assert got.body.index(b'name="model"') < got.body.index(b'name="file"')  # the SDK's order: model first
    assert _spent(srv) == COST50
    # 5,000 left: 51 seconds are reserved 5,100 and refused before the upstream; 50 fit exactly
    went.reader = None
    with pytest.raises(openai.RateLimitError) as e:
        client.audio.transcriptions.create(
            model="whisper-1", file=("b.wav", wav(51, rate=16000, width=2)), response_format="text"
        )
    assert e.value.code == "project_spend_limit_exceeded"
    assert len(_received(fake)) == 1
    client.audio.transcriptions.create(model="whisper-1", file=("c.wav", WAV50), response_format="text")
    assert _spent(srv) == 2 * COST50
    assert len(went.spooled) == 3


def test_a_budget_for_n_large_uploads_lets_exactly_n_through_concurrently(make_gateway, fake, went):
    srv = _gw(make_gateway, fake)
    _limit(srv, 3)  # 30,000 micro-dollars: six 50 s files
    client = _client(srv, default_headers={"x-fake-latency-ms": "300"}, timeout=60)  # all held at once

    def one(i: int) -> str:
        try:
            client.audio.transcriptions.create(model="whisper-1", file=(f"{i}.wav", WAV50), response_format="text")
            return "ok"
        except openai.RateLimitError as e:
            return str(e.code)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    assert sorted(results) == ["ok"] * 6 + ["project_spend_limit_exceeded"] * 4, results
    assert len(_received(fake)) == 6
    assert _spent(srv) == 6 * COST50 == 30_000
    assert len(went.spooled) == 10 and {how for how, _ in went} == {"spool"}


def test_under_prepaid_credit_a_large_wav_is_measured_too(make_gateway, fake, went):
    srv = _gw(make_gateway, fake)
    with admin_http(srv) as h:
        assert h.post("/credit_grants", json={"amount": 1, "currency": "usd"}).status_code == 200
    client = _client(srv)
    client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV50), response_format="text")
    client.audio.transcriptions.create(model="whisper-1", file=("b.wav", WAV50), response_format="text")
    assert _spent(srv) == 2 * COST50
    with pytest.raises(openai.APIStatusError) as e:  # the credit is used up
        client.audio.transcriptions.create(model="whisper-1", file=("c.wav", WAV50), response_format="text")
    assert e.value.status_code in (402, 429) and len(_received(fake)) == 2
    assert [how for how, _ in went] == ["spool", "spool"]


def test_a_large_flac_is_measured_too(make_gateway, fake, went):
    from tests.billing.test_audio_flac import frame, streaminfo

    flac = streaminfo() + b"".join(frame(i, 4096, verbatim=True) for i in range(150))  # 38.4 s, 1.2 MB
    assert len(flac) > MB
    srv = _gw(make_gateway, fake)
    _limit(srv, 1)
    _client(srv).audio.transcriptions.create(model="whisper-1", file=("a.flac", flac), response_format="text")
    assert [how for how, _ in went] == ["spool"]
    assert _spent(srv) == 39 * PER_SECOND  # 38.4 s: 39 seconds billed


def test_without_money_controls_a_large_upload_still_streams(make_gateway, fake, went):
    """The client's file is held after its first MiB until the gateway has begun sending the body upstream: it
    does (streaming), so the upload completes; spooled, the client would wait the 10 s out first."""
    srv = _gw(make_gateway, fake)
    went.reader = Reader(WAV50, hold_at=MB)
    out = _client(srv).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", went.reader), response_format="text"
    )
    assert "fake" in out
    ((how, sent),) = went
    assert how == "stream" and sent is not None and sent < len(WAV50)
    assert went.spooled == []  # not even considered: no money control applies
    (got,) = _received(fake)
    assert WAV50 in got.body
    # billed by its size, an estimate (no length was measured)
    assert _spent(srv) == ESTIMATE50


def test_what_the_spool_cannot_bound_is_not_spooled(make_gateway, fake, went):
    """Under a limit: a token-priced model streams (its tokens bound it); a file keyplane cannot measure (its
    bytes or its name say so) is refused, as before, without being spooled first when its name says so."""
    srv = _gw(make_gateway, fake)
    _limit(srv, 1)
    client = _client(srv)
    for name, data, by_name in [
        ("a.mp4", b"\0\0\0\x18ftypmp42" + bytes(2 * MB), False),  # (MP4 and Ogg are measured: ruled out by
        ("a.flac", WAV50, False),  # their bytes, like a WAV named .flac)
        ("a.ogg", b"OggS" + bytes(2 * MB), False),
        ("a.aiff", b"FORM" + bytes(2 * MB), True),
    ]:
        spooled = len(went.spooled)
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.audio.transcriptions.create(model="whisper-1", file=(name, data), response_format="text")
        assert e.value.code == "cost_not_bounded", name
        if by_name:  # its name alone rules it out: never spooled. A WAV named .flac is ruled out by its first
            assert len(went.spooled) == spooled, name  # bytes, spooled only when none came with the part's head
    assert went == [] and _received(fake) == []
    assert _spent(srv) == 0
    _limit(srv, 100)  # room for the token bound of the mini transcriber
    spooled = len(went.spooled)
    client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=("a.wav", WAV50))
    assert went == [("stream", None)] and len(went.spooled) == spooled  # streamed, never spooled


def _chunked(parts: list[bytes]):
    yield from parts


def _post_chunked(srv, wav_bytes: bytes, cut: int | None = None) -> httpx.Response | None:
    head = (
        b'--kpb\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="response_format"\r\n\r\ntext\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    parts = [head] + [wav_bytes[i : i + 256 * 1024] for i in range(0, len(wav_bytes), 256 * 1024)]
    parts.append(b"\r\n--kpb--\r\n")
    h = {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "multipart/form-data; boundary=kpb"}
    try:
        return httpx.post(srv.v1 + "/audio/transcriptions", headers=h, content=_chunked(parts), timeout=30)
    except httpx.TransportError:  # the gateway may answer before the client has written it all
        return None


def test_the_spool_counts_against_the_size_bound(make_gateway, fake, went):
    srv = _gw(make_gateway, fake)
    _limit(srv, 100)
    big = wav(100, rate=16000, width=2)  # 3.2 MB, chunked: past the 3 MiB bound while it is spooled
    r = _post_chunked(srv, big)
    assert r is None or (r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"), r
    assert went.spooled == [True] and went == [] and _received(fake) == []
    # a chunked one within the bound is measured, not priced at the bound (3 MiB: 53 minutes)
    r = _post_chunked(srv, WAV50)
    assert r is not None and r.status_code == 200, r
    assert _spent(srv) == COST50


def test_a_client_that_leaves_mid_spool_reserves_and_sends_nothing(make_gateway, fake, went, caplog):
    import socket
    import time
    from urllib.parse import urlsplit

    srv = _gw(make_gateway, fake)
    _limit(srv, 1)
    u = urlsplit(srv.v1)
    head = (
        b'--kpb\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    with caplog.at_level(logging.WARNING), socket.create_connection((u.hostname, u.port)) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + srv.api_key.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=kpb\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for p in [head, WAV50[: MB // 2], WAV50[MB // 2 : MB]]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
        deadline = time.monotonic() + 5
        while not went.spooled and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    time.sleep(0.5)
    assert went.spooled == [True] and went == [] and _received(fake) == []
    assert _spent(srv) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records
    lim = billing_of(srv).limiter
    assert not getattr(lim, "reservations", None)
    # the gateway serves the next one
    out = _client(srv).audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV50), response_format="text")
    assert "fake" in out and _spent(srv) == COST50


def test_a_spooled_upload_is_measured_off_the_event_loop(make_gateway, fake, went, monkeypatch):
    """Measuring may cost half a second of CPU per MB (an M4A's AAC blocks are read in Python: billing/audio_mp4.py):
    the chunks of an audio part being measured are fed in a thread, never on the event loop."""
    import asyncio

    from keyplane.proxy import uploads

    fed: list[int] = []
    real = asyncio.to_thread

    async def noting(func, *args, **kw):
        if getattr(func, "__name__", "") == "_feed":
            fed.append(len(args[0]))
        return await real(func, *args, **kw)

    monkeypatch.setattr(uploads.asyncio, "to_thread", noting)
    srv = _gw(make_gateway, fake)
    _limit(srv, 1)
    _client(srv).audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV50), response_format="text")
    assert [w[0] for w in went] == ["spool"] and _spent(srv) == COST50  # spooled, measured: billed its length
    assert fed and sum(fed) >= len(WAV50)  # every byte of the file part went through the thread
