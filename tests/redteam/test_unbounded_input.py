"""Admission's reservation is not a bound on input: content keyplane counts as 0 (or a fixed 765) tokens
(inline files, file ids, image URLs, hosted tools) is billed by the provider at its real size.

The upstream here plays OpenAI: a chat request carrying a `file` content part (a 200-page PDF sent inline
as file_data) is billed 200,000 input tokens, as the provider counts the PDF's text and page images.
keyplane counts that part as 0 tokens (limits/tokens.py Counter.content), reserves ~$0.0001, and 20
concurrent requests spend $8 on a $0.10 project limit.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures

import httpx
import orjson
from aiohttp import web

from tests.billing.conftest import UPSTREAM_KEY_ENV, admin_http
from tests.proxy.conftest import wait_for
from tests.redteam.conftest import serve_in_thread

PROMPT_BILLED = 200_000  # input tokens the provider bills for the attached document


class Provider:
    """A minimal OpenAI-like upstream that bills attached documents at their real size."""

    def __init__(self) -> None:
        self.port = 0
        self.calls = 0

        async def chat(req: web.Request) -> web.Response:
            body = await req.json()
            self.calls += 1
            await asyncio.sleep(0.3)  # generation time: the requests overlap
            parts = [p for m in body["messages"] for p in (m["content"] if isinstance(m["content"], list) else [])]
            prompt = PROMPT_BILLED if any(p.get("type") == "file" for p in parts) else 10
            return web.json_response(
                {
                    "id": f"chatcmpl-{self.calls}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
                }
            )

        self.port = serve_in_thread("/v1/chat/completions", chat, client_max_size=64 * 1024 * 1024)


def test_input_not_in_the_body_spends_past_the_hard_limit(make_gw):
    p = Provider()
    cfg = (
        f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{p.port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 0\n'
    )
    srv = make_gw(config_text=cfg)
    with admin_http(srv) as h:  # $0.10 per month for the project
        r = h.post(
            f"/projects/{srv.project_id}/spend_limit",
            json={"currency": "USD", "interval": "month", "threshold_amount": 10},
        )
        assert r.status_code == 200, r.text
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.7 " + b"x" * 3000).decode()
    body = orjson.dumps(
        {
            "model": "gpt-4.1",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Summarize this report."},
                        {"type": "file", "file": {"filename": "report.pdf", "file_data": pdf}},
                    ],
                }
            ],
        }
    )

    def one(_: int) -> int:
        return httpx.post(
            srv.v1 + "/chat/completions",
            content=body,
            timeout=30,
            headers={"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"},
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        statuses = list(ex.map(one, range(20)))
    billing = srv.app.runtime.features.billing
    # Every answered request settled (nothing reserved any more): its spend is counted.
    wait_for(lambda: srv.call(billing.spent("project", srv.project_id))[1] == 0, timeout=10)
    with admin_http(srv) as h:
        spent = h.get(f"/projects/{srv.project_id}/spend_limit").json()["spent"]
    print("statuses", statuses, "upstream calls", p.calls, "spent cents", spent)
    assert spent <= 10, f"a $0.10 hard limit: {statuses.count(200)} requests served, ${spent / 100:.2f} spent"
