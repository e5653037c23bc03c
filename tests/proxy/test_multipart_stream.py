"""The streaming multipart reader (proxy/multipart_stream.py) reads every body as the whole-body reader
(proxy/multipart.py) does, however it is cut into chunks: the same text fields, the same file count, the same
refusals. A body the two read differently would let an upload be priced one way and served another."""

from __future__ import annotations

import random

import pytest

from keyplane import errors
from keyplane.proxy import multipart
from keyplane.proxy.multipart_stream import Parser

B = b"kpB0und4ry"
H = [(b"content-type", b"multipart/form-data; boundary=" + B)]


def _text(name: str, value: bytes, extra: str = "") -> bytes:
    return b"--" + B + f'\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n"


def _file(name: str, data: bytes) -> bytes:
    return (
        b"--"
        + B
        + f'\r\nContent-Disposition: form-data; name="{name}"; filename="x.bin"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + b"\r\n"
    )


END = b"--" + B + b"--\r\n"
DATA = bytes(range(256)) * 40 + b"\r\n--kpB0und" + b"\r\n-" + b"--" + B[:-1]  # near-delimiters inside the file

BODIES = {
    "ok": _text("model", b"whisper-1") + _file("file", DATA) + _text("language", b"en") + END,
    "ok, no final CRLF": _text("model", b"m") + _file("file", DATA) + END[:-2],
    "ok, two files": _text("prompt", b"x" * 5000) + _file("image", DATA) + _file("image", b"") + END,
    "preamble": b"junk\r\n" + _text("model", b"m") + END,
    "no closing": _text("model", b"m") + _file("file", DATA),
    "after closing": _text("model", b"m") + END + b"more",
    "twice": _text("model", b"a") + _text("model", b"b") + END,
    "priced as file": _file("model", b"gpt-4o") + END,
    "odd header": _text("model", b"m").replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n") + END,
    "rfc2231": _text("model", b"m", "; filename*=utf-8''x") + END,
    "bad after delimiter": _text("model", b"m") + b"--" + B + b"XX" + END,
    "empty": b"",
}


def _whole(body: bytes) -> tuple[dict[str, str], int] | str:
    try:
        fields = multipart.text_fields(H, body)
        files = sum(1 for _, filename, _ in multipart._parts(H, body) if filename is not None)
    except errors.APIError:
        return "refused"
    return fields, files


def _streamed(body: bytes, cuts: list[int]) -> tuple[dict[str, str], int] | str:
    fields: dict[str, str] = {}

    def on_field(name: str, value: str, _files: int) -> None:
        if name in fields:
            raise multipart._refuse("twice")
        fields[name] = value

    p = Parser(B, on_field)
    try:
        prev = 0
        for c in [*cuts, len(body)]:
            p.feed(body[prev:c])
            prev = c
        p.end()
    except errors.APIError:
        return "refused"
    return fields, p.files


@pytest.mark.parametrize("name", list(BODIES))
def test_the_streaming_reader_agrees_with_the_whole_body_reader(name: str) -> None:
    body = BODIES[name]
    want = _whole(body)
    rng = random.Random(name)
    chunkings: list[list[int]] = [[], list(range(1, min(len(body), 4000)))]  # whole; byte by byte (its start)
    inner = range(1, len(body))
    for _ in range(30):
        chunkings.append(sorted(rng.sample(inner, k=min(len(inner), rng.randint(1, 20)))))
    for cuts in chunkings:
        assert _streamed(body, cuts) == want, (name, cuts[:10])
