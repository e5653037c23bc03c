"""Large multipart uploads stream through to the upstream (issue 17 item 3, proxy/uploads.py): audio, images and
files, through the official SDK against the fake upstream. The upstream receives the bytes the client sent;
the fields admission needs are read first; the size bound holds mid-stream (the upstream request is dropped,
nothing is billed); a field that comes too late is refused; an upload the provider received whole is billed
and never sent twice."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
from openai import OpenAI

from keyplane.proxy import uploads
from keyplane.testing.fake_upstream import Behaviour
from tests.billing.conftest import billing_of, set_spend_limit
from tests.endpoints.conftest import media

MB = 1024 * 1024
WAV = b"RIFF" + os.urandom(2 * MB)  # 2 MiB: above STREAM_ABOVE
LIMIT = 3 * MB


def _spent(srv) -> int:
    return srv.call(billing_of(srv).spent("project", srv.project_id))[0]


def _gw(make_gateway, fake, extra: str = "", **env: str):
    return make_gateway(media(fake) + extra, KEYPLANE_MAX_BODY_BYTES=str(LIMIT), **env)


@pytest.fixture
def streams(monkeypatch):
    """How each upload went upstream: 'stream' or 'spool' (the gateway runs in this process)."""
    seen: list[str] = []
    real = uploads.Upload.iterate

    def iterate(self):  # type: ignore[no-untyped-def]
        seen.append("stream" if self.streaming else "spool")
        return real(self)

    monkeypatch.setattr(uploads.Upload, "iterate", iterate)
    return seen


def _received(fake, path: str) -> list:
    return [r for r in fake.model_requests() if r.path == path]


def test_a_transcription_streams_through_whole_and_is_billed(make_gateway, fake, streams):
    srv = _gw(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert t.text == "fake" and streams == ["stream"]
    (got,) = _received(fake, "/v1/audio/transcriptions")
    assert WAV in got.body and got.headers.get("content-length") == str(len(got.body))
    # The fake reports one second per 1000 bytes of body: 2098 s at $0.006 a minute, billed as reported.
    secs = len(got.body) // 1000
    assert _spent(srv) == -(-secs * 6_000 // 60)


def test_a_model_after_the_file_is_read_before_admission(make_gateway, fake, streams):
    """openai-node sends the fields in the order they are given ({file, model}): the rest of the body is then
    spooled to a private temporary file so that the model (here the cheaper mini transcriber) is known."""
    srv = _gw(make_gateway, fake)
    files = [("file", ("a.wav", WAV, "audio/wav")), ("model", (None, b"gpt-4o-mini-transcribe"))]
    r = httpx.post(
        srv.v1 + "/audio/transcriptions", headers={"Authorization": f"Bearer {srv.api_key}"}, files=files, timeout=30
    )
    assert r.status_code == 200, r.text
    assert streams == ["spool"]
    (got,) = _received(fake, "/v1/audio/transcriptions")
    assert WAV in got.body
    # billed its tokens at the mini's rates: 15,000 audio tokens at $3/1M, 5 text at $1.25/1M, 20 out at $5/1M
    assert _spent(srv) == -(-(15_000 * 3_000_000 + 5 * 1_250_000 + 20 * 5_000_000) // 1_000_000) == 45_107


def _chunked(parts: list[bytes]):  # a body with no Content-Length: only counted as it arrives
    yield from parts


def _body(boundary: str, fields: list[tuple[str, bytes]], file: bytes, late: list[tuple[str, bytes]] = ()) -> list:
    def text(name: str, value: bytes) -> bytes:
        return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"

    head = b"".join(text(n, v) for n, v in fields)
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    chunks = [head] + [file[i : i + 256 * 1024] for i in range(0, len(file), 256 * 1024)]
    tail = b"\r\n" + b"".join(text(n, v) for n, v in late) + f"--{boundary}--\r\n".encode()
    return [*chunks, tail]


def _post_chunked(srv, parts: list[bytes]) -> httpx.Response | None:
    h = {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "multipart/form-data; boundary=kpb"}
    try:
        return httpx.post(srv.v1 + "/audio/transcriptions", headers=h, content=_chunked(parts), timeout=30)
    except httpx.TransportError:  # the gateway may close before the client has written it all
        return None


def test_a_chunked_upload_past_the_size_bound_is_cut_mid_stream(make_gateway, fake, streams):
    srv = _gw(make_gateway, fake)
    r = _post_chunked(srv, _body("kpb", [("model", b"whisper-1")], os.urandom(5 * MB)))
    assert r is not None and (r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"), r
    assert streams == ["stream"]  # it went upstream as it came, and was cut there
    assert _received(fake, "/v1/audio/transcriptions") == []  # the provider never got a whole request
    assert _spent(srv) == 0
    # A chunked upload within the bound streams through (priced at the bound, billed at what arrived).
    r = _post_chunked(srv, _body("kpb", [("model", b"whisper-1")], WAV))
    assert r is not None and r.status_code == 200, r
    (got,) = _received(fake, "/v1/audio/transcriptions")
    assert WAV in got.body and "content-length" not in got.headers
    assert _spent(srv) == -(-(len(got.body) // 1000) * 6_000 // 60)


def test_a_field_repeated_after_the_file_is_refused_before_the_upstream_has_it(make_gateway, fake, streams):
    """Priced as whisper-1 from the head, then `model` again after 2 MiB of audio: the upload is cut (400) and
    the upstream never receives a body it could read as another model."""
    srv = _gw(make_gateway, fake)
    parts = _body("kpb", [("model", b"whisper-1")], WAV, late=[("model", b"gpt-4o-transcribe")])
    r = _post_chunked(srv, parts)
    assert r is not None and (r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart"), r
    assert streams == ["stream"]
    assert _received(fake, "/v1/audio/transcriptions") == []
    assert _spent(srv) == 0
    # Malformed (no closing boundary): refused when the body ends, before its last bytes go upstream.
    parts = _body("kpb", [("model", b"whisper-1")], WAV)
    r = _post_chunked(srv, [*parts[:-1], b"\r\n--kpb"])
    assert r is not None and r.status_code == 400, r
    assert _received(fake, "/v1/audio/transcriptions") == []


def test_an_image_edit_is_spooled_and_priced_by_its_fields_and_images(make_gateway, fake, streams):
    srv = _gw(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    images = [(f"{i}.png", b"\x89PNG" + os.urandom(700 * 1024), "image/png") for i in range(3)]

    def edit() -> object:
        return client.images.edit(model="gpt-image-1", image=images, prompt="a hat", quality="low", size="1024x1024")

    # Reserved: $0.011 per low 1024x1024 image, the prompt's tokens at $5/1M, and 3 x 6,000 image tokens for the
    # edited images at gpt-image-1's image input rate, $10/1M: 191,000 micro-dollars and the prompt's. A spend
    # limit of 19 cents refuses it before the upstream; one of 20 cents lets it through.
    set_spend_limit(srv, 19)
    with pytest.raises(openai.RateLimitError):
        edit()
    assert _received(fake, "/v1/images/edits") == [] and streams == []  # read whole (spooled), never sent
    set_spend_limit(srv, 20)
    r = edit()
    assert len(r.data) == 1 and streams == ["spool"]
    (got,) = _received(fake, "/v1/images/edits")
    assert all(img[1] in got.body for img in images)
    # Billed the usage the answer reports (tests' fake: 50 text tokens, 500 image tokens per input image, 272
    # image output tokens for a low 1024x1024 image): 50 x $5 + 1,500 x $10 + 272 x $40 per 1M.
    assert _spent(srv) == 250 + 15_000 + 10_880


def test_a_file_upload_streams_and_a_batch_file_is_read_whole(make_gateway, fake, streams):
    srv = _gw(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    data = os.urandom(2 * MB)
    f = client.files.create(file=("notes.bin", data), purpose="assistants")
    assert f.id and streams == ["stream"]
    assert fake.objects.contents[f.id] == data
    line = b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}\n'
    client.files.create(file=("batch.jsonl", line * (2 * MB // len(line))), purpose="batch")
    assert streams == ["stream"]  # the batch input file was not streamed: keyplane reads its requests


def test_an_upload_the_provider_received_whole_is_billed_and_not_sent_again(make_gateway, fake, streams):
    text = media(fake).replace('models = ["dall-e-*"', 'read_timeout = 0.5\nmodels = ["dall-e-*"')
    assert "read_timeout" in text
    srv = make_gateway(text, KEYPLANE_MAX_BODY_BYTES=str(LIMIT))
    fake.push(Behaviour(latency=2.0), Behaviour(latency=2.0))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert e.value.status_code == 504
    assert len(_received(fake, "/v1/audio/transcriptions")) == 1  # sent once
    assert _spent(srv) > 0  # billed at its estimate: the provider may have run it


def test_a_client_that_leaves_mid_upload_cancels_the_upstream_request(make_gateway, fake, streams, caplog):
    import socket
    import time
    from urllib.parse import urlsplit

    srv = _gw(make_gateway, fake)
    u = urlsplit(srv.v1)
    parts = _body("kpb", [("model", b"whisper-1")], WAV)[:4]  # the head and 768 KiB of audio, then gone
    with socket.create_connection((u.hostname, u.port)) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + srv.api_key.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=kpb\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for p in parts:
            sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
        deadline = time.monotonic() + 5
        while not streams and time.monotonic() < deadline:  # it streams upstream, then the client leaves
            time.sleep(0.02)  # poll interval (a deadline loop)
    deadline = time.monotonic() + 5
    while not srv.call(_settled(srv)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams == ["stream"]
    assert _received(fake, "/v1/audio/transcriptions") == []
    assert _spent(srv) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV)).text == "fake"


async def _settled(srv) -> bool:
    """No reservation left open (the cut upload was settled)."""
    lim = billing_of(srv).limiter
    held = getattr(lim, "reservations", None)
    return not held if held is not None else True


def test_model_permissions_hold_for_streamed_and_spooled_uploads(make_gateway, fake, streams):
    from tests.billing.conftest import admin_sdk

    srv = _gw(make_gateway, fake)
    admin_sdk(srv).admin.organization.projects.model_permissions.update(
        srv.project_id, mode="allow_list", model_ids=["whisper-1"]
    )
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", WAV))
    assert e.value.code == "model_not_permitted"
    files = [("file", ("a.wav", WAV, "audio/wav")), ("model", (None, b"gpt-4o-transcribe"))]  # the model last
    r = httpx.post(
        srv.v1 + "/audio/transcriptions", headers={"Authorization": f"Bearer {srv.api_key}"}, files=files, timeout=30
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_permitted"
    assert streams == [] and _received(fake, "/v1/audio/transcriptions") == []
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV)).text == "fake"


def test_a_chunked_transcription_is_billed_on_the_bytes_received_not_the_bound(make_gateway, fake):
    """Without a Content-Length the estimate reserves up to max_body_bytes (3 MiB: 53 minutes at 8 kbit/s);
    once the body has arrived, an answer that reports no duration (`response_format=text`) is billed on its
    size (2 MiB: 35 minutes)."""
    srv = _gw(make_gateway, fake)
    r = _post_chunked(srv, _body("kpb", [("model", b"whisper-1"), ("response_format", b"text")], WAV))
    assert r is not None and r.status_code == 200, r
    assert r.text.strip() == "fake"
    (got,) = _received(fake, "/v1/audio/transcriptions")
    assert _spent(srv) == -(-len(got.body) // 60_000) * 6_000 == 35 * 6_000


def test_a_streamed_upload_never_goes_out_on_a_pooled_connection(make_gateway, fake, streams):
    """A streamed upload cannot be sent twice (proxy/uploads.py), so it must not meet a keep-alive connection the
    upstream closed while it sat idle in the pool: that first write fails, and a body held whole survives it by
    being sent again, a stream does not (it was a 502). Each streamed upload opens a connection of its own; small
    requests keep sharing the pool."""
    srv = _gw(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.embeddings.create(model="text-embedding-3-small", input="warm the pool")
    before = fake.connections
    for _ in range(3):
        client.embeddings.create(model="text-embedding-3-small", input="pooled")
    assert fake.connections == before  # kept alive and reused
    for _ in range(2):
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert streams == ["stream", "stream"]
    assert fake.connections == before + 2  # one new connection per streamed upload
    client.embeddings.create(model="text-embedding-3-small", input="pooled again")
    assert fake.connections == before + 2


def test_the_parts_of_an_upload_stream_through(make_gateway, fake, streams):
    """The Uploads API's parts (``/v1/uploads/{id}/parts``, up to 64 MB each) stream like the other uploads:
    the provider gets every byte, keyplane holds one chunk at a time, and the size bound holds per part."""
    srv = _gw(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    data = os.urandom(5 * MB)
    up = client.uploads.upload_file_chunked(
        file=data, filename="big.bin", bytes=len(data), mime_type="application/octet-stream",
        purpose="assistants", part_size=2 * MB,
    )  # fmt: skip
    assert up.status == "completed" and up.file is not None
    assert streams == ["stream"] * 3  # every part is above STREAM_ABOVE with its multipart framing
    assert fake.objects.contents[up.file.id] == data
    # A part past the size bound is cut mid-stream (413): the provider never has it whole.
    big = client.uploads.create(
        bytes=4 * MB, filename="x.bin", mime_type="application/octet-stream", purpose="assistants"
    )
    seen = len(fake.objects.parts)
    with pytest.raises(openai.APIStatusError) as e:
        client.uploads.parts.create(upload_id=big.id, data=os.urandom(LIMIT + MB))
    assert e.value.status_code == 413
    assert len(fake.objects.parts) == seen
