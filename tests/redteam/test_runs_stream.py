"""POST /v1/threads/runs with "stream": true is read in JSON mode (tenancy.wants_body: a create), so the
whole SSE answer is buffered in memory, is not a JSON body, and is *retried*: every retry starts another
paid run at the provider, and the client gets a 502. (Assistants "create thread and run", streamed.)"""

from __future__ import annotations

import asyncio
import time

import httpx
from aiohttp import web

from tests.billing.conftest import UPSTREAM_KEY_ENV
from tests.redteam.conftest import serve_in_thread


class Provider:
    def __init__(self) -> None:
        self.port = 0
        self.runs = 0

        async def runs(req: web.Request) -> web.StreamResponse:
            await req.read()
            self.runs += 1
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            for i in range(5):
                await resp.write(b'event: thread.message.delta\ndata: {"id":"msg_1","delta":{"i":%d}}\n\n' % i)
                await asyncio.sleep(0.05)  # the point: a provider streaming slowly
            await resp.write(b"event: done\ndata: [DONE]\n\n")
            return resp

        self.port = serve_in_thread("/v1/threads/runs", runs)


def test_streamed_thread_runs_are_buffered_and_retried(make_gw):
    p = Provider()
    cfg = (
        f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{p.port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 2\nretry_backoff = 0.01\n'
    )
    srv = make_gw(config_text=cfg)
    r = httpx.post(
        srv.v1 + "/threads/runs",
        timeout=30,
        headers={"Authorization": f"Bearer {srv.api_key}"},
        json={"assistant_id": None, "stream": True, "thread": {"messages": []}},
    )
    time.sleep(0.2)  # a window for a duplicate run to reach the provider: the assertion is that none does
    print(r.status_code, r.headers.get("content-type"), r.text[:200], "runs started upstream:", p.runs)
    assert p.runs == 1 and r.status_code == 200, (r.status_code, p.runs)
