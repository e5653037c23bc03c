"""A model name keyplane does not know answers 404 model_not_found with "Did you mean" the closest known name
(proxy/skipped.py), but only a name the asking key could use: a model of an upstream dedicated to another project,
or one its model permissions hide, is never named to it (GET /v1/models lists neither: a suggestion would tell a
key what its project was kept from seeing)."""

from __future__ import annotations

import openai
import pytest

from tests.proxy.conftest import admin

MISSING = "KP_TEST_SUGGESTIONS_UNSET_KEY"
CONFIG = f"""
[[upstreams]]
name = "demo"
base_url = "demo"
models = ["demo-*"]

[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "{MISSING}"
models = ["gpt-*"]

[[upstreams]]
name = "private"
base_url = "https://private.example/v1"
api_key_env = "{MISSING}"
models = ["acme-secret-llm"]
projects = ["Research"]
"""


@pytest.fixture
def srv(make_gateway, monkeypatch):
    monkeypatch.delenv(MISSING, raising=False)
    return make_gateway(CONFIG)


def _not_found(srv, model: str) -> str:
    c = openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    return e.value.message


def test_a_model_of_another_projects_upstream_is_not_suggested(srv):
    assert "Did you mean `gpt-4o-mini`?" in _not_found(srv, "gpt-4o-mni")  # a shared upstream's: suggested
    msg = _not_found(srv, "acme-secret-ll")  # only the Research project's upstream serves acme-secret-llm
    assert "Did you mean" not in msg and "acme-secret-llm" not in msg


def test_a_model_the_projects_model_permissions_hide_is_not_suggested(srv):
    admin(
        srv,
        "POST",
        f"/projects/{srv.project_id}/model_permissions",
        {"mode": "deny_list", "model_ids": ["gpt-4o-mini"]},
    )
    c = openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    assert "gpt-4o-mini" not in {m.id for m in c.models.list()}
    msg = _not_found(srv, "gpt-4o-mni")
    assert "gpt-4o-mini" not in msg
    assert "Did you mean `gpt-4o-mini`?" not in msg
