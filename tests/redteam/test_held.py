"""Probes that held (kept as regression checks): parser differentials on the JSON head, duplicate headers."""

from __future__ import annotations

import pytest

from tests.proxy.test_integrity import raw_http

CASES = [
    b'{"model":"gpt-4o-mini","messages":[],"max_tokens":1,"max_tokens":2000000}',
    b'{"model":"gpt-4o-mini","messages":[],"max\\u005ftokens":0}',
    b'\xef\xbb\xbf{"model":"gpt-4o-mini","messages":[],"max_tokens":5}',
    b'{"model":"gpt-4o-mini","messages":[],"max_tokens":5.0}',
    b'{"model":"gpt-4o-mini","messages":[],"max_tokens":1e3}',
    b'{"model":"gpt-4o-mini","messages":[],"max_tokens":NaN}',
    b'{"model":"gpt-4o-mini","messages":[],"n":1,"n":1000}',
    b'{"model":"gpt-4o-mini","messages":[],"background":true}',
    '{"model":"gpt-4o-mini","messages":[],"max_tokens":0}'.encode("utf-16"),
]


@pytest.mark.parametrize("body", CASES)
def test_refused_before_the_upstream(make_gw, fake, body):
    srv = make_gw()
    status, _, answer = raw_http(
        srv.base_url,
        "POST",
        "/v1/chat/completions",
        {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"},
        body,
    )
    assert 400 <= status < 500, (status, answer)
    assert fake.model_requests() == []
