"""The default kill-switch rules leave a new user exploring alone, still catch probing, and say so in
the server log (#14.1), through a real server and the official SDK."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
from openai import OpenAI

from keyplane.clock import FakeClock
from tests.support import Gateways, RunningServer


@pytest.fixture
def srv(gateways: Gateways) -> RunningServer:  # the shipped defaults: no [guard] section at all
    return gateways.start(clock=FakeClock())


def _drain(srv: RunningServer) -> None:
    srv.call(srv.app.runtime.features.guard.drain())


def test_exploring_endpoints_the_upstream_lacks_does_not_suspend_the_key(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyplane.guard")
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    not_found = 0
    for i in range(20):  # half the calls are 404s: what the demo upstream (or keyplane) does not serve
        client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": f"hi {i}"}])
        try:
            if i % 2:
                client.audio.speech.create(model="demo-echo", voice="alloy", input="hello")  # the upstream's 404
            else:
                client.get("/nonexistent-area", cast_to=object)  # keyplane's own 404: a path it does not proxy
        except openai.NotFoundError:
            not_found += 1
    assert not_found == 20
    _drain(srv)
    entry = srv.app.runtime.snapshot.keys_by_id[srv.init["api_key_id"]]
    assert entry.suspended_at is None and entry.revoked_at is None
    reply = client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "still here"}])
    assert reply.choices
    assert not [r for r in caplog.records if r.name == "keyplane.guard" and "kill switch" in r.getMessage()]


def test_probing_is_caught_and_the_server_log_says_so(srv: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="keyplane.guard")
    r = httpx.post(
        srv.v1 + f"/organization/projects/{srv.project_id}/api_keys",
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        json={"name": "narrow", "permissions": ["api.model.read"]},
    )
    assert r.status_code == 200, r.text
    narrow, narrow_id = r.json()["value"], r.json()["id"]
    thief = OpenAI(base_url=srv.v1, api_key=narrow, max_retries=0)
    denied = 0
    for _ in range(40):  # a stolen read-only key tried on what it may not do: keyplane's own 403s
        try:
            thief.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}])
        except openai.PermissionDeniedError:
            denied += 1
        except openai.AuthenticationError:
            break  # suspended already (the evaluator runs in the background)
    assert denied >= 30
    _drain(srv)
    entry = srv.app.runtime.snapshot.keys_by_id[narrow_id]
    assert entry.suspended_at is not None and entry.revoked_at is None
    with pytest.raises(openai.AuthenticationError) as refused:
        thief.models.list()
    assert "rule error-spike (" in str(refused.value)
    lines = [r for r in caplog.records if r.name == "keyplane.guard" and "kill switch" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    line = lines[0].getMessage()
    redacted = srv.app.runtime.snapshot.keys_by_id[narrow_id].redacted_value
    assert "rule error-spike (error_spike) suspended key" in line
    assert redacted in line and narrow_id in line and narrow not in line
    figures = json.loads(line.rsplit("; figures ", 1)[1])
    assert figures["errors"] == figures["requests"] >= 30 and figures["by_status"] == {"403": figures["errors"]}
