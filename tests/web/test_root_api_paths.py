"""An SDK pointed at the server's root (base_url without /v1) gets an OpenAI-shaped 404 that says so, not the
dashboard's HTML page; a browser's unknown page is still the page."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import RunningServer


def test_a_base_url_without_v1_is_told_so(shared_server: RunningServer) -> None:
    root = shared_server.v1.removesuffix("/v1")
    client = OpenAI(base_url=root, api_key=shared_server.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "unknown_url"
    assert "did you mean /v1/chat/completions?" in e.value.message and "base_url" in e.value.message
    r = httpx.get(root + "/models")  # no key either: an API area all the same
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    page = httpx.get(root + "/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
