"""Ephemeral client secrets for browser sessions: minted with the SDK, used in the WebSocket subprotocol."""

from __future__ import annotations

import asyncio

import openai
import pytest
import websockets
from openai import OpenAI

from keyplane.clock import FakeClock
from tests.realtime.conftest import UPSTREAM_KEY, admin


def _open(srv, secret: str, model: str | None = None) -> int:
    """Open a browser-style session with the secret: 101 and one session.created, or the HTTP status."""
    url = srv.base_url.replace("http://", "ws://") + "/v1/realtime" + (f"?model={model}" if model else "")

    async def go() -> int:
        try:
            async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]) as ws:
                assert '"session.created"' in await ws.recv()
                return 101
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(go())


def test_a_client_secret_opens_sessions_of_its_model_until_its_key_is_revoked(make_gateway, fake_rt):
    srv = make_gateway()
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "browser backend"})
    client = OpenAI(base_url=srv.v1, api_key=key["value"], max_retries=0)
    cs = client.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}, expires_after={"anchor": "created_at", "seconds": 60}
    )
    assert cs.value.startswith("ek_kp_") and key["value"] not in cs.value
    assert cs.session.model == "gpt-realtime"
    assert _open(srv, cs.value) == 101  # the model comes from the secret
    assert _open(srv, cs.value, "gpt-realtime") == 101
    assert _open(srv, cs.value, "gpt-realtime-mini") == 400  # bound to its model
    assert fake_rt.auth == [f"Bearer {UPSTREAM_KEY}"] * 2  # the browser never sees a provider key
    tampered = cs.value[:-2] + ("A" if cs.value[-2] != "A" else "B") + cs.value[-1]
    assert _open(srv, tampered) == 401
    admin(srv, "POST", f"/api_keys/{key['id']}/revoke", {"reason": "rotated"})

    def refused() -> bool:
        return _open(srv, cs.value) == 401

    deadline = 50
    while not refused() and deadline:  # the revocation reaches the snapshot within its poll interval
        deadline -= 1
        asyncio.run(asyncio.sleep(0.1))
    assert refused()


def test_minting_needs_the_model_scope_and_a_valid_lifetime(make_gateway):
    srv = make_gateway()
    ro = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "ro", "permissions": "read_only"})
    with pytest.raises(openai.PermissionDeniedError):
        OpenAI(base_url=srv.v1, api_key=ro["value"], max_retries=0).realtime.client_secrets.create()
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 7201})
    assert e.value.body["param"] == "expires_after.seconds"
    cs = client.realtime.client_secrets.create()
    assert 590 <= cs.expires_at - int(__import__("time").time()) <= 610


def test_a_client_secret_expires(make_gateway):
    clock = FakeClock(__import__("time").time())
    srv = make_gateway(clock=clock)
    cs = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}, expires_after={"anchor": "created_at", "seconds": 10}
    )
    assert cs.expires_at == int(clock.now()) + 10
    clock.advance(9)
    assert _open(srv, cs.value) == 101
    clock.advance(2)
    assert _open(srv, cs.value) == 401
