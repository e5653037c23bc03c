"""Issue 14 "The first hour", on the data plane: what a newcomer's SDK sees (items 5 and 18)."""

from __future__ import annotations

import httpx
import openai
import pytest

from keyplane.config import DEFAULT_CONFIG

MISSING = "KP_TEST_FIRST_HOUR_UNSET_KEY"  # never set: the README's setup without OPENAI_API_KEY
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def readme_setup(make_gateway, monkeypatch):
    """keyplane as `keyplane init` configures it (demo + openai), with the OpenAI key variable unset."""
    monkeypatch.delenv(MISSING, raising=False)
    return make_gateway(DEFAULT_CONFIG.replace('"OPENAI_API_KEY"', f'"{MISSING}"'))


def counting_client(srv, **kw) -> tuple[openai.OpenAI, list[str]]:
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(str(r.url))]})
    return openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, http_client=http, **kw), sent


def test_missing_provider_key_is_named_and_not_retried(readme_setup):
    client, sent = counting_client(readme_setup, max_retries=2)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(**CHAT)
    assert e.value.status_code == 503
    assert f"upstream openai skipped: ${MISSING} is not set" in e.value.message
    assert e.value.code == "upstream_not_configured"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1, sent  # the SDK did not retry what waiting cannot fix

    sent.clear()
    with pytest.raises(openai.InternalServerError) as e:
        client.files.list()
    assert f"upstream openai skipped: ${MISSING} is not set" in e.value.message and len(sent) == 1

    sent.clear()
    with pytest.raises(openai.InternalServerError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "upstream openai skipped" in e.value.message and len(sent) == 1


def test_demo_and_unknown_models_unchanged(readme_setup):
    client, _ = counting_client(readme_setup, max_retries=0)
    done = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "You said: hi"
    with pytest.raises(openai.NotFoundError) as e:  # no upstream would serve it, key or not
        client.chat.completions.create(model="mistral-large", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("wrap", ['"{}"', "'{}'", '"{}', "`{}`"])
def test_quoted_key_gets_a_hint(readme_setup, wrap):
    client = openai.OpenAI(base_url=readme_setup.v1, api_key=wrap.format(readme_setup.api_key), max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}])
    assert "wrapped in quotes" in e.value.message and "without them" in e.value.message
    assert readme_setup.api_key not in e.value.message  # masked, as every 401


def test_quoted_key_in_raw_header(readme_setup):
    r = httpx.get(readme_setup.v1 + "/models", headers={"Authorization": f"bearer '{readme_setup.api_key}'"})
    assert r.status_code == 401 and "wrapped in quotes" in r.json()["error"]["message"]
    r = httpx.get(readme_setup.v1 + "/models", headers={"Authorization": f"Bearer {readme_setup.api_key}"})
    assert r.status_code == 200
