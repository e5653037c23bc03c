"""replies.response_headers: what of the upstream's answer headers reaches the client. Its credential never does, in
any header (an upstream may echo it), and the rest passes as sent; keyplane's own request ids and the admission's
x-ratelimit-* headers are added, the upstream's x-ratelimit-* dropped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from keyplane import keys
from keyplane.proxy import replies

SECRET = "sk-upstream-0123456789abcdef"


def _headers(upstream: list[tuple[bytes, bytes]], secret: str = SECRET) -> tuple[list[tuple[bytes, bytes]], Any]:
    out: Any = SimpleNamespace(dep=SimpleNamespace(api_key=secret), resp=SimpleNamespace(headers=upstream))
    ctx: Any = SimpleNamespace(
        request_id="req_kp1", upstream_request_id=None, extra_headers=[(b"x-ratelimit-limit-requests", b"60")]
    )
    return replies.response_headers(out, ctx, 0.0, 12), ctx


def test_the_credential_is_masked_in_every_header_and_the_rest_passes_as_sent() -> None:
    masked = keys.mask(SECRET).encode()
    h, ctx = _headers(
        [
            (b"openai-model", b"gpt-4o-mini"),
            (b"connection", b"keep-alive"),
            (b"x-echo", b"key=" + SECRET.encode() + b"; again " + SECRET.encode()),
            (b"x-debug", SECRET.encode()),
            (b"x-request-id", b"req_up"),
            (b"x-ratelimit-remaining-requests", b"5"),
            (b"x-other", b"sk-upstream-0123"),  # the start of it only: not the credential
        ]
    )
    got = dict(h)
    assert not any(SECRET.encode() in v for _, v in h)
    assert got[b"x-echo"] == b"key=" + masked + b"; again " + masked
    assert got[b"x-debug"] == masked
    assert (
        got[b"openai-model"] == b"gpt-4o-mini" and b"connection" not in got and got[b"x-other"] == b"sk-upstream-0123"
    )
    assert got[b"x-request-id"] == b"req_up" and ctx.upstream_request_id == "req_up"
    assert got[b"x-keyplane-request-id"] == b"req_kp1"
    assert got[b"content-length"] == b"12"
    assert got[b"x-ratelimit-limit-requests"] == b"60"  # admission's, not the upstream's
    assert b"x-ratelimit-remaining-requests" not in got


@pytest.mark.parametrize("secret", ["", "short"])
def test_no_credential_to_mask(secret: str) -> None:
    h, _ = _headers([(b"x-echo", b"short and sweet")], secret)
    assert dict(h)[b"x-echo"] == b"short and sweet"
