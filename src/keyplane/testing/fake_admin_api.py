"""The fake provider's Admin API (keyplane.testing.fake_provider): the gate every admin request passes
(recorded, injected faults, the admin key), cursor paging, and the organization's resources: projects,
users, admin keys, service accounts and their keys (created, deleted), project keys, spend limits.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyplane.testing.fake_org import FakeOrganization


def invalid_key() -> JSONResponse:
    """The provider's 401 for a key it does not know (admin API and model calls alike)."""
    error = {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None}
    return JSONResponse({"error": {**error, "code": "invalid_api_key"}}, 401)


class FakeAdminApi(FakeOrganization):
    """The Admin API's handlers over the organization (routed by FakeProvider.app)."""

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
            return invalid_key()
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
