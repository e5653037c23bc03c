"""Property: a key whose project is at its hard limit reaches no spending endpoint, whatever the shape.

Hypothesis generates request variants a client with a valid key controls: the path (escapes of any
character, case of the escapes, dot and empty segments, ';' parameters, an encoded '?'), the method,
the content type and the body's fields (model aliases and look-alikes, output limits of every type
and sign, n, stream, background, duplicate keys). The project has spent exactly its spend limit;
no variant may reach a spending endpoint upstream (issue #12, "Done when").
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane.proxy.canonical import canonical_path, classify
from tests.billing.conftest import admin_http
from tests.proxy.test_integrity import raw_http

# 4 cents = 40,000 µ$: five requests of max_tokens=5 at the suite's price (8,000 µ$ each) spend it exactly.
LIMIT = {"currency": "USD", "interval": "month", "threshold_amount": 4}

SPENDING = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/batches",
    "/v1/threads/runs",
    "/v1/threads/thread_1/runs",
    "/v1/fine_tuning/jobs",
    "/v1/moderations",
]


def _escape(c: str, upper: bool) -> str:
    e = f"%{ord(c):02x}"
    return e.upper() if upper else e


@st.composite
def paths(draw: st.DrawFn) -> str:
    path = draw(st.sampled_from(SPENDING))
    out = ""
    for c in path:
        if c != "/" and draw(st.integers(0, 9)) == 0:
            out += _escape(c, draw(st.booleans()))
        elif c == "/" and draw(st.integers(0, 30)) == 0:
            out += draw(st.sampled_from(["%2f", "%2F", "//", "/./", "/%2e/", "/x/../", "/x/%2e%2e/"]))
        else:
            out += c
    tail = draw(st.sampled_from(["", "", "", "/", "%3F", "%3Fa=1", "?a=1", ";x", "%00", "%20", "%23", ".", "/."]))
    return out + tail


def bodies() -> st.SearchStrategy[bytes]:
    model = st.sampled_from(
        [
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            "GPT-4O-MINI",
            "gpt-4o",
            "whisper-1",
            "dall-e-3",
            "tts-1",
            "not-a-model",
            None,
        ]
    )
    limit = st.sampled_from([None, 1, 5, 0, -1, -(10**9), 10**9, 2**63, "5", 5.0, True, [], None])
    fields = st.fixed_dictionaries(
        {},
        optional={
            "model": model,
            "max_tokens": limit,
            "max_completion_tokens": limit,
            "max_output_tokens": limit,
            "n": st.sampled_from([1, 2, 0, -5, 10**6]),
            "stream": st.booleans(),
            "background": st.booleans(),
            "input": st.just("hi"),
            "messages": st.just([{"role": "user", "content": "hi"}]),
            "prompt": st.just("a cat"),
        },
    )

    def encode(d: dict, dup: bool) -> bytes:
        body = orjson.dumps({k: v for k, v in d.items() if v is not None or k != "model"})
        if dup and body != b"{}":  # a second, cheaper-looking model and output limit before the real ones
            body = b'{"model":"gpt-4o-mini","max_tokens":1,' + body[1:]
        return body

    return st.builds(encode, fields, st.booleans())


CTYPES = [
    "application/json",
    "text/plain",
    "",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-16",
    "multipart/form-data; boundary=xyz",
]


def _spending_upstream(fake) -> list[str]:
    out = []
    for rec in fake.model_requests():
        path = rec.path.split("?", 1)[0]
        try:
            if classify(rec.method, canonical_path(path.encode())).spending:
                out.append(f"{rec.method} {rec.path}")
        except Exception:
            out.append(f"{rec.method} {rec.path} (not even canonical)")
    return out


@pytest.mark.slow
def test_nothing_reaches_a_spending_endpoint_past_the_hard_limit(make_gateway, fake):
    srv = make_gateway()
    with admin_http(srv) as h:
        assert h.post(f"/projects/{srv.project_id}/spend_limit", json=LIMIT).status_code == 200
    auth = {"Authorization": f"Bearer {srv.api_key}"}
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    for _ in range(5):
        status, _, answer = raw_http(
            srv.base_url, "POST", "/v1/chat/completions", {**auth, "Content-Type": "application/json"}, body
        )
        assert status == 200, answer  # together they spend exactly the limit
    status, _, answer = raw_http(
        srv.base_url, "POST", "/v1/chat/completions", {**auth, "Content-Type": "application/json"}, body
    )
    assert status == 429, answer
    fake.requests.clear()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(paths(), st.sampled_from(["POST", "POST", "POST", "PUT", "PATCH"]), st.sampled_from(CTYPES), bodies())
    def attempt(path: str, method: str, ctype: str, payload: bytes) -> None:
        headers = {**auth, "Content-Type": ctype} if ctype else dict(auth)
        status, _, answer = raw_http(srv.base_url, method, path, headers, payload)
        assert status >= 400 or not classify(method, canonical_path(path.encode())).spending, (path, status, answer)
        assert status < 500 or status == 503, (path, status, answer)
        assert b"Traceback" not in answer
        assert _spending_upstream(fake) == [], (method, path, ctype, payload)

    attempt()
