"""The Realtime WebSocket: IP allowlists and model permissions at connect (refused before the upstream is
dialled), hosted tool permissions on each client event (an error event; the event is not forwarded)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from tests.realtime.conftest import admin as rt_admin
from tests.realtime.conftest import fake_rt, make_gateway  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def _status(srv: Any, model: str) -> int:
    async def go() -> int:
        try:
            async with AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0).realtime.connect(model=model):
                return 101
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_realtime_is_held_to_the_policies(make_gateway, fake_rt):  # noqa: F811
    srv = make_gateway()
    pid = srv.project_id
    rt_admin(srv, "POST", f"/projects/{pid}/model_permissions", {"mode": "deny_list", "model_ids": ["gpt-realtime"]})
    assert _status(srv, "gpt-realtime") == 403
    assert fake_rt.paths == []
    # The organization's list holds the admin API too: the admin calls come from an address it keeps.
    with httpx.Client(
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        timeout=30,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    ) as at:
        r = at.post(srv.v1 + "/organization/ip_allowlist", json={"cidrs": ["10.0.0.0/8", "127.0.0.2"]})
        assert r.status_code == 200, r.text
        assert _status(srv, "gpt-realtime-mini") == 403
        assert fake_rt.paths == []
        assert at.delete(srv.v1 + "/organization/ip_allowlist").status_code == 200
    rt_admin(srv, "POST", f"/projects/{pid}/hosted_tool_permissions", {"mcp": {"enabled": False}})

    async def go() -> list[Any]:
        got: list[Any] = []
        async with AsyncOpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0).realtime.connect(
            model="gpt-realtime-mini"
        ) as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "tools": [{"type": "mcp", "server_label": "x", "server_url": "https://example.com"}],
                }
            )
            await conn.response.create()
            async for ev in conn:
                got.append(ev)
                if ev.type == "response.done":
                    break
        return got

    got = asyncio.run(asyncio.wait_for(go(), 20))
    assert [e.error.code for e in got if e.type == "error"] == ["tool_not_permitted"]
    assert not any("mcp" in str(ev) for ev in fake_rt.of_type("session.update"))
    assert (
        httpx.get(srv.v1 + "/organization/ip_allowlist", headers={"Authorization": f"Bearer {srv.admin_key}"}).json()[
            "enabled"
        ]
        is False
    )
