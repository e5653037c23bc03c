"""The fake upstream itself, driven over HTTP as the benchmark and out-of-process tests do."""

from __future__ import annotations

import httpx

from keyplane.testing import Behaviour


def test_control_endpoints_and_headers(fake):
    base = fake.base_url.removesuffix("/v1")
    httpx.post(base + "/_fake/push", json=[{"status": 429, "retry_after_ms": "250"}])
    r = httpx.post(fake.base_url + "/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 429 and r.headers["retry-after-ms"] == "250" and r.json()["error"]["code"]
    r = httpx.post(
        fake.base_url + "/chat/completions",
        json={"model": "m", "messages": [{"content": "12345678"}]},
        headers={"x-fake-text": "a b c"},
    )
    assert r.json()["choices"][0]["message"]["content"] == "a b c"
    assert r.json()["usage"]["prompt_tokens"] == 2 and r.json()["usage"]["completion_tokens"] == 3
    r = httpx.post(fake.base_url + "/responses", json={"model": "m", "input": "x"}, headers={"x-fake-garbage": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html"
    seen = httpx.get(base + "/_fake/requests").json()
    assert [s["path"] for s in seen] == ["/v1/chat/completions"] * 2 + ["/v1/responses"]
    httpx.post(base + "/_fake/default", json={"status": 503})
    assert httpx.get(fake.base_url + "/models").status_code == 503
    httpx.post(base + "/_fake/reset")
    assert httpx.get(fake.base_url + "/models").status_code == 200
    assert fake.default == Behaviour()


def test_streams_and_faults(fake):
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    text = httpx.post(fake.base_url + "/chat/completions", json=body).text
    assert text.endswith("data: [DONE]\n\n") and '"choices":[],"usage":{' in text
    fake.push(Behaviour(die_after=2))
    try:
        httpx.post(fake.base_url + "/chat/completions", json=body)
        raise AssertionError("a stream cut short must fail")
    except httpx.RemoteProtocolError:
        pass
    assert fake.model_requests()[-1].finished is False
