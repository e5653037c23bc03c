"""Transcriptions priced by the length of the uploaded file (issue 17), end to end: the official SDK (and a raw
multipart body where the SDK cannot send one) through a real gateway to the fake upstream, under a spend
limit. The fake answers ``json`` with a duration of one second per 1,000 bytes uploaded, and ``text`` with
no duration at all (then keyplane bills the length it measured).
"""

from __future__ import annotations

import io
import struct
import warnings
import wave

import httpx
import openai
import pytest
from openai import OpenAI

from tests.billing.conftest import billing_of
from tests.billing.conftest import set_spend_limit as _limit

PER_SECOND = 100  # whisper-1: $0.006 a minute, in micro-dollars a second


def _upstream(fake) -> str:
    return (
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = ["whisper-*"]\n'
    )


def _spent(srv) -> tuple[int, int]:
    return srv.call(billing_of(srv).spent("project", srv.project_id))


def wav(seconds: int, rate: int = 8000, width: int = 1, says: int | None = None) -> bytes:
    """``seconds`` of audio; ``says``: the seconds its data chunk (and RIFF) size claims instead."""
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x80" * seconds * rate * width)
    f = bytearray(b.getvalue())
    if says is not None:
        at = f.index(b"data") + 8
        f[at - 4 : at] = struct.pack("<I", says * rate * width)
        f[4:8] = struct.pack("<I", says * rate * width + 36)
    return bytes(f)


def _client(srv) -> OpenAI:
    return OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)


def test_a_wav_is_admitted_under_a_spend_limit_and_billed_its_length(make_gateway, fake):
    srv = make_gateway(_upstream(fake))
    client = _client(srv)
    _limit(srv, 1)  # 1 cent: 10,000 micro-dollars, 100 seconds of whisper-1
    sent = len(fake.model_requests())
    # a format keyplane cannot measure: still refused, before the upstream
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("a.mp4", b"\0\0\0\x18ftypmp42" + bytes(5000)))
    assert e.value.code == "cost_not_bounded"
    assert len(fake.model_requests()) == sent
    # 30 seconds: reserved and billed 30 seconds (`text` reports no duration)
    out = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(30)), response_format="text")
    assert "fake" in out
    assert _spent(srv) == (30 * PER_SECOND, 0)
    # 7,000 left: 71 seconds do not fit (reserved by their length, not by a rounded-up minute)...
    with pytest.raises(openai.RateLimitError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("b.wav", wav(71)), response_format="text")
    assert e.value.code == "project_spend_limit_exceeded"
    assert len(fake.model_requests()) == sent + 1
    # ...70 do, exactly (a translation, priced alike)
    with warnings.catch_warnings():  # the SDK marks translations deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        client.audio.translations.create(model="whisper-1", file=("c.wav", wav(70)), response_format="text")
    assert _spent(srv) == (100 * PER_SECOND, 0)


def test_a_wav_whose_header_lies_is_billed_by_its_real_length(make_gateway, fake):
    srv = make_gateway(_upstream(fake))
    client = _client(srv)
    _limit(srv, 100)
    liar = wav(20, says=1)  # 20 seconds of samples; its header says 1
    client.audio.transcriptions.create(model="whisper-1", file=("liar.wav", liar), response_format="text")
    assert _spent(srv) == (20 * PER_SECOND, 0)
    # MP3: 200 frames of 1152 samples at 44.1 kHz (5.2 s: 6 seconds billed), an ID3v2 tag first and a
    # Xing header that says 1 frame
    frame = b"\xff\xfb\x90\x64" + bytes(413)
    xing = b"\xff\xfb\x90\x64" + bytes(32) + b"Xing" + struct.pack(">II", 1, 1) + bytes(413 - 44)
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16) + xing + frame * 199
    client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3), response_format="text")
    assert _spent(srv) == (26 * PER_SECOND, 0)
    # a duration the answer reports is what is billed (the fake's: one second per 1,000 bytes sent)
    f = wav(10)
    r = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", f))
    reported = r.usage.seconds
    assert reported > 10
    assert _spent(srv) == ((26 + reported) * PER_SECOND, 0)


def test_a_large_upload_is_measured_whatever_the_order_of_its_fields(make_gateway, fake):
    """Over 1 MiB: a body whose `model` follows the file is read whole (spooled) before admission, and its
    file measured as it is read; so, under a spend limit, is one whose `model` comes first (the Python SDK's
    order), which would otherwise stream upstream unread (tests/billing/test_audio_spool_gateway.py)."""
    srv = make_gateway(_upstream(fake))
    _limit(srv, 100)
    f = wav(40, rate=16000, width=2)  # 1.28 MB
    assert len(f) > 1024 * 1024
    b = b"kpb-bound"
    body = (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + f + b"\r\n"
        b"--" + b + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--" + b + b'\r\nContent-Disposition: form-data; name="response_format"\r\n\r\ntext\r\n'
        b"--" + b + b"--\r\n"
    )
    r = httpx.post(
        srv.v1 + "/audio/transcriptions",
        content=body,
        headers={"Authorization": f"Bearer {srv.api_key}", "Content-Type": "multipart/form-data; boundary=kpb-bound"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert _spent(srv) == (40 * PER_SECOND, 0)
    _client(srv).audio.transcriptions.create(model="whisper-1", file=("a.wav", f), response_format="text")
    assert _spent(srv) == (80 * PER_SECOND, 0)
    # a file keyplane cannot measure is still refused, before the upstream
    sent = len(fake.model_requests())
    with pytest.raises(openai.PermissionDeniedError) as e:
        _client(srv).audio.transcriptions.create(model="whisper-1", file=("a.m4a", f), response_format="text")
    assert e.value.code == "cost_not_bounded"
    assert len(fake.model_requests()) == sent
