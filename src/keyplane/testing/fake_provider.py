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

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

USAGE_KINDS = (
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "vector_stores",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
)


@dataclass
class Bucket:
    """One hourly usage row of the fake: what /organization/usage/completions reports."""

    start_time: int
    project_id: str
    api_key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    requests: int = 1


@dataclass
class FakeProvider:
    admin_key: str = "sk-admin-fake0123456789"
    projects: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    service_accounts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    api_keys: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    admin_keys: list[dict[str, Any]] = field(default_factory=list)
    usage: list[Bucket] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)  # {start_time, project_id, value}
    spend_limits: dict[str, dict[str, Any]] = field(default_factory=dict)  # project id -> project.spend_limit
    spend_limit_status: int = 0  # 403: the admin key may not read limits; 404: an API without the endpoint
    secrets: dict[str, str] = field(default_factory=dict)  # key id -> value (what /v1/chat/completions accepts)
    shared_key: str = "sk-proj-shared-upstream-key-0000"  # a key of no project here (keyplane's shared upstream)
    model_calls: list[tuple[str, str]] = field(default_factory=list)  # (key id or "shared", model) per completion
    created: int = 0
    faults: collections.deque[tuple[int, float | None]] = field(default_factory=collections.deque)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    page_size: int = 2  # small, so every test pages
    hang_seconds: float = 5.0

    # --- building an organization ---------------------------------------------------------------

    def add_project(self, pid: str, name: str, created_at: int = 1_700_000_000) -> None:
        self.projects.append(
            {
                "id": pid,
                "object": "organization.project",
                "name": name,
                "created_at": created_at,
                "archived_at": None,
                "status": "active",
            }
        )
        self.service_accounts.setdefault(pid, [])
        self.api_keys.setdefault(pid, [])

    def add_user(self, uid: str, email: str, role: str = "reader") -> dict[str, Any]:
        u = {
            "object": "organization.user",
            "id": uid,
            "name": email.split("@")[0],
            "email": email,
            "role": role,
            "added_at": 1_700_000_000,
        }
        self.users.append(u)
        return u

    def add_service_account(self, pid: str, sid: str, name: str) -> dict[str, Any]:
        sa = {
            "object": "organization.project.service_account",
            "id": sid,
            "name": name,
            "role": "member",
            "created_at": 1_700_000_000,
        }
        self.service_accounts[pid].append(sa)
        return sa

    def add_key(
        self,
        pid: str,
        kid: str,
        secret: str,
        *,
        user: dict[str, Any] | None = None,
        service_account: dict[str, Any] | None = None,
        last_used_at: int | None = None,
        created_at: int = 1_700_000_000,
    ) -> None:
        owner: dict[str, Any] = (
            {"type": "user", "user": user}
            if user is not None
            else {"type": "service_account", "service_account": service_account}
        )
        self.secrets[kid] = secret
        self.api_keys[pid].append(
            {
                "object": "organization.project.api_key",
                "id": kid,
                "name": kid,
                "redacted_value": redact(secret),
                "created_at": created_at,
                "last_used_at": last_used_at,
                "owner": owner,
            }
        )

    def set_spend_limit(self, pid: str, dollars: int, enforcing: bool = False) -> None:
        self.spend_limits[pid] = {
            "object": "project.spend_limit",
            "currency": "USD",
            "interval": "month",
            "threshold_amount": dollars * 100,
            "enforcement": {"status": "enforcing" if enforcing else "inactive"},
            "notification_channel": None,
        }

    def key_ids(self) -> set[str]:
        return {k["id"] for keys in self.api_keys.values() for k in keys}

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

    async def _gate(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path, request.url.query))
        if self.faults:
            status, retry = self.faults.popleft()
            if status == 0:
                await asyncio.sleep(self.hang_seconds)
                status = 504
            headers = {"retry-after": str(retry)} if retry is not None else {}
            return JSONResponse(
                {"error": {"message": "injected", "type": "server_error", "param": None, "code": None}},
                status,
                headers=headers,
            )
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.admin_key}":
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )
        return None

    def _list(self, request: Request, items: list[dict[str, Any]]) -> Response:
        after = request.query_params.get("after")
        limit = min(int(request.query_params.get("limit", self.page_size)), self.page_size)
        start = 0
        if after:
            start = next((i + 1 for i, x in enumerate(items) if x["id"] == after), len(items))
        page = items[start : start + limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + limit < len(items),
            }
        )

    async def _projects(self, request: Request) -> Response:
        return await self._gate(request) or self._list(request, self.projects)

    async def _users(self, request: Request) -> Response:
        return await self._gate(request) or self._list(request, self.users)

    async def _admin_keys(self, request: Request) -> Response:
        return await self._gate(request) or self._list(request, self.admin_keys)

    async def _service_accounts(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._new_account(request)
        accounts = self.service_accounts.get(request.path_params["pid"], [])
        return await self._gate(request) or self._list(request, accounts)

    # --- provisioning: service accounts and their keys (the value is shown once, in the create's answer) ---

    def _missing(self, what: str) -> Response:
        return JSONResponse(
            {"error": {"message": f"No such {what}.", "type": "invalid_request_error", "param": None, "code": None}},
            404,
        )

    async def _project(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        found = next((p for p in self.projects if p["id"] == request.path_params["pid"]), None)
        return JSONResponse(found) if found is not None else self._missing("project")

    def _mint(self, pid: str, sa: dict[str, Any], name: str) -> dict[str, Any]:
        self.created += 1
        kid = f"key_sa{self.created}"
        secret = f"sk-svcacct-{self.created:04d}" + "k" * 40 + f"{self.created:04d}"
        self.add_key(pid, kid, secret, service_account=sa, created_at=int(time.time()))
        return {
            "object": "organization.project.service_account.api_key",
            "id": kid,
            "name": name,
            "value": secret,
            "created_at": int(time.time()),
            "expires_at": None,
            "spend_limit": None,
        }

    async def _new_account(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        pid = request.path_params["pid"]
        if pid not in self.service_accounts:
            return self._missing("project")
        body = await request.json()
        self.created += 1
        sa = self.add_service_account(pid, f"svc_kp{self.created}", str(body.get("name") or "keyplane"))
        return JSONResponse({**sa, "api_key": self._mint(pid, sa, "Secret Key")})

    async def _service_account(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        pid, sid = request.path_params["pid"], request.path_params["sid"]
        accounts = self.service_accounts.get(pid, [])
        found = next((a for a in accounts if a["id"] == sid), None)
        if found is None:
            return self._missing("service account")
        accounts.remove(found)
        self.api_keys[pid] = [
            k for k in self.api_keys[pid] if (k["owner"].get("service_account") or {}).get("id") != sid
        ]
        return JSONResponse({"object": "organization.project.service_account.deleted", "id": sid, "deleted": True})

    async def _new_key(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        pid, sid = request.path_params["pid"], request.path_params["sid"]
        sa = next((a for a in self.service_accounts.get(pid, []) if a["id"] == sid), None)
        if sa is None:
            return self._missing("service account")
        body = await request.json()
        return JSONResponse(self._mint(pid, sa, str(body.get("name") or "keyplane")))

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
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                401,
            )
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

    async def _keys(self, request: Request) -> Response:
        return await self._gate(request) or self._list(request, self.api_keys.get(request.path_params["pid"], []))

    async def _key(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        keys = self.api_keys.get(request.path_params["pid"], [])
        kid = request.path_params["kid"]
        found = next((k for k in keys if k["id"] == kid), None)
        if found is None:
            return JSONResponse(
                {
                    "error": {
                        "message": f"No API key {kid}.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                404,
            )
        if request.method == "GET":
            return JSONResponse(found)
        keys.remove(found)
        return JSONResponse({"object": "organization.project.api_key.deleted", "id": kid, "deleted": True})

    async def _spend_limit(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        if self.spend_limit_status == 404:
            return JSONResponse(
                {
                    "error": {
                        "message": f"Invalid URL (GET {request.url.path})",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                404,
            )
        if self.spend_limit_status:
            return JSONResponse(
                {
                    "error": {
                        "message": "You do not have permission to read spend limits.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                self.spend_limit_status,
            )
        found = self.spend_limits.get(request.path_params["pid"])
        if found is None:
            return JSONResponse(
                {
                    "error": {
                        "message": "No spend limit is set for this project.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                404,
            )
        return JSONResponse(found)

    def _window(self, request: Request, width: int) -> tuple[list[int], int]:
        q = request.query_params
        start = int(q["start_time"]) // width * width
        end = int(q.get("end_time", start + 7 * width))
        page = int(q.get("page") or 0)
        starts = list(range(start, end, width))
        return starts, page

    def _paged(self, starts: list[int], page: int, results: Any, width: int) -> Response:
        chunk = starts[page * self.page_size * 4 : (page + 1) * self.page_size * 4]
        more = (page + 1) * self.page_size * 4 < len(starts)
        data = [{"object": "bucket", "start_time": t, "end_time": t + width, "results": results(t)} for t in chunk]
        return JSONResponse(
            {"object": "page", "data": data, "has_more": more, "next_page": str(page + 1) if more else None}
        )

    async def _usage(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        kind = request.path_params["kind"]
        if kind not in USAGE_KINDS:
            return JSONResponse(
                {"error": {"message": "unknown", "type": "invalid_request_error", "param": None, "code": None}}, 404
            )
        starts, page = self._window(request, 3600)

        def results(t: int) -> list[dict[str, Any]]:
            if kind != "completions":
                return []
            return [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": b.input_tokens,
                    "output_tokens": b.output_tokens,
                    "input_cached_tokens": 0,
                    "num_model_requests": b.requests,
                    "project_id": b.project_id,
                    "api_key_id": b.api_key_id,
                    "model": b.model,
                    "user_id": None,
                    "batch": None,
                }
                for b in self.usage
                if b.start_time == t
            ]

        return self._paged(starts, page, results, 3600)

    async def _costs(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        starts, page = self._window(request, 86400)

        def results(t: int) -> list[dict[str, Any]]:
            return [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": c["value"], "currency": "usd"},
                    "line_item": None,
                    "project_id": c["project_id"],
                }
                for c in self.costs
                if c["start_time"] == t
            ]

        return self._paged(starts, page, results, 86400)


def redact(secret: str) -> str:
    """OpenAI's redacted form: the prefix, ``**...**`` and the last four characters."""
    head = secret[:8]
    return f"{head}**********{secret[-4:]}"


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
