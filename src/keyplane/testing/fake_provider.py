"""A fake provider organization behind the OpenAI Admin API, for the provider connector's tests.

Shapes from the official SDK's admin types (openai/types/admin/organization/...): projects, users,
project service accounts and API keys (cursor paging: ``after``/``limit``, ``has_more``/``last_id``),
admin API keys, ``DELETE /organization/projects/{p}/api_keys/{k}``, ``/organization/usage/<kind>``
and ``/organization/costs`` (page paging: ``page``/``next_page``, buckets of ``results``), project spend
limits (``GET /organization/projects/{p}/spend_limit``), service accounts created and deleted with their
keys (``POST .../service_accounts``, ``POST .../service_accounts/{sa}/api_keys``), and ``POST
/v1/chat/completions`` accepting ``shared_key`` and every live project key (``model_calls`` says which).

Faults: ``fake.faults`` is a FIFO of (status, retry_after) answered before the next requests
(``(429, 2)``, ``(503, None)``, ``(0, None)`` = hang past the client's timeout). Every request is
recorded in ``fake.requests`` as (method, path, query string); the admin key it accepts is ``fake.admin_key``.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyplane.testing.fake_admin_api import invalid_key
from keyplane.testing.fake_usage_api import FakeUsageApi


class FakeProvider(FakeUsageApi):
    """The whole fake: its organization (fake_org.py), Admin API (fake_admin_api.py), usage and costs
    (fake_usage_api.py), and a model endpoint, served by :meth:`app`."""

    # --- the server -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        r = "/v1/organization"
        return Starlette(
            routes=[
                Route(f"{r}/projects", self._projects),
                Route(f"{r}/users", self._users),
                Route(f"{r}/admin_api_keys", self._admin_keys),
                Route(f"{r}/projects/{{pid}}", self._project),
                Route(f"{r}/projects/{{pid}}/service_accounts", self._service_accounts, methods=["GET", "POST"]),
                Route(f"{r}/projects/{{pid}}/service_accounts/{{sid}}", self._service_account, methods=["DELETE"]),
                Route(f"{r}/projects/{{pid}}/service_accounts/{{sid}}/api_keys", self._new_key, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route(f"{r}/projects/{{pid}}/api_keys", self._keys),
                Route(f"{r}/projects/{{pid}}/api_keys/{{kid}}", self._key, methods=["GET", "DELETE"]),
                Route(f"{r}/projects/{{pid}}/spend_limit", self._spend_limit),
                Route(f"{r}/usage/{{kind}}", self._usage),
                Route(f"{r}/costs", self._costs),
            ]
        )

    async def _chat(self, request: Request) -> Response:
        """A model endpoint (the fake as keyplane's upstream): accepts the shared key and every live project
        key, and records which one each completion came with."""
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        live = {k["id"] for keys in self.api_keys.values() for k in keys}
        who = (
            "shared"
            if token == self.shared_key
            else next((kid for kid, v in self.secrets.items() if v == token and kid in live), None)
        )
        if who is None:
            return invalid_key()
        body = await request.json()
        self.model_calls.append((who, str(body.get("model"))))
        return JSONResponse(
            {
                "id": f"chatcmpl-fake{len(self.model_calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )


class RunningFake:
    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        config = uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="fake-provider")
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake provider did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
