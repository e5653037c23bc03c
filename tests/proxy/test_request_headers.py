"""request.check_headers: the header count and size bounds, and compressed bodies refused, in that order."""

from __future__ import annotations

import pytest

from keyplane import errors
from keyplane.proxy import request


def _code(headers: list[tuple[bytes, bytes]]) -> str | None:
    try:
        request.check_headers(headers)
    except errors.APIError as e:
        return e.code or e.message[:30]
    return None


def test_bounds_and_encodings() -> None:
    ok = [(b"host", b"x"), (b"content-encoding", b" Identity "), (b"content-encoding", b"")]
    assert _code(ok) is None
    gz = [(b"host", b"x"), (b"content-encoding", b"gzip")]
    assert _code(gz) == "unsupported_encoding"
    big = [(b"x-a", b"v" * request.MAX_HEADER_BYTES)]
    too_big = _code(big)
    assert too_big is not None and too_big != "unsupported_encoding"
    assert _code(gz + big) == too_big  # the size is refused first, wherever the encoding stands
    assert _code(big + gz) == too_big
    many = [(b"x-%d" % i, b"v") for i in range(request.MAX_HEADERS + 1)]
    assert _code(many) == too_big and _code(gz + many) == too_big
    exact = [(b"k", b"v" * (request.MAX_HEADER_BYTES - 1))]
    assert _code(exact) is None
    assert _code([(b"k", b"v" * request.MAX_HEADER_BYTES)]) == too_big


@pytest.mark.parametrize("value", [b"br", b"GZIP", b"deflate, identity", b" x "])
def test_any_real_encoding_is_refused(value: bytes) -> None:
    assert _code([(b"content-encoding", value)]) == "unsupported_encoding"
