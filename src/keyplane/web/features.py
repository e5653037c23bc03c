"""The dashboard's view of the features that plug in (limits and billing, metering, kill switch).

They publish their data through admin API endpoints under /v1/organization; the dashboard calls
that same admin app in-process, as the signed-in user (the audit log shows a ``session`` actor),
so it shows exactly what the API shows. An endpoint that is not there yet answers the admin app's
``unknown_url`` 404, and the page says the feature is not available instead of failing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from keyplane.control import Actor
from keyplane.scopes import ALL
from keyplane.snapshot import KeyEntry

log = logging.getLogger("keyplane.web")

P = "/v1/organization"


@dataclass(frozen=True)
class Result:
    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def available(self) -> bool:
        """False when the endpoint does not exist (the feature is absent), not for a missing object."""
        if self.status in (404, 405) and isinstance(self.data, dict):
            code = (self.data.get("error") or {}).get("code")
            return code not in ("unknown_url", "method_not_allowed")
        return self.status != 0

    @property
    def error(self) -> str:
        if isinstance(self.data, dict) and isinstance(self.data.get("error"), dict):
            return str(self.data["error"].get("message") or "error")
        return f"HTTP {self.status}"

    def items(self) -> list[dict[str, Any]]:
        if isinstance(self.data, dict) and isinstance(self.data.get("data"), list):
            return [x for x in self.data["data"] if isinstance(x, dict)]
        if isinstance(self.data, list):
            return [x for x in self.data if isinstance(x, dict)]
        return []


UNAVAILABLE = Result(404, {"error": {"code": "unknown_url", "message": "not available"}})


def session_principal(user_id: str, email: str, ip: str) -> tuple[KeyEntry, Actor]:
    """What authenticate_admin returns for an in-process call made for a dashboard user."""
    entry = KeyEntry(
        id=f"session:{user_id}",
        kind="admin",
        name="dashboard session",
        redacted_value="",
        project_id=None,
        owner_user_id=user_id,
        service_account_id=None,
        permissions=ALL,
        expires_at=None,
        revoked_at=None,
        revoke_reason=None,
        suspended_at=None,
        suspend_reason=None,
    )
    return entry, Actor("session", user_id, {"user": {"id": user_id, "email": email}, "ip_address": ip})


def _query(params: dict[str, Any] | None) -> str:
    pairs: list[tuple[str, str]] = []
    for k, v in (params or {}).items():
        if v is None or v == "" or v == []:
            continue
        if isinstance(v, list | tuple):
            pairs.extend((f"{k}[]", str(x)) for x in v)
        else:
            pairs.append((k, str(v)))
    return urlencode(pairs)


class AdminBridge:
    def __init__(self, admin_app: Any) -> None:
        self.app = admin_app

    async def call(
        self,
        method: str,
        path: str,
        principal: tuple[KeyEntry, Actor],
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Result:
        if self.app is None:
            return UNAVAILABLE
        raw = orjson.dumps(body) if body is not None else b""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": _query(query).encode(),
            "client": ("127.0.0.1", 0),
            "server": ("keyplane", 0),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
            "keyplane.session": principal,
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("dashboard call to %s %s failed", method, path)
            return Result(500, {"error": {"message": "internal error"}})
        payload = b"".join(chunks)
        try:
            data = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            data = payload.decode("utf-8", "replace")
        return Result(status, data)

    # --- the endpoints the pages use (OpenAI Admin API shapes where the platform has them) -----

    async def get(self, path: str, principal: tuple[KeyEntry, Actor], **query: Any) -> Result:
        return await self.call("GET", P + path, principal, query=query)

    async def post(self, path: str, principal: tuple[KeyEntry, Actor], body: dict[str, Any]) -> Result:
        return await self.call("POST", P + path, principal, body=body)

    async def delete(self, path: str, principal: tuple[KeyEntry, Actor]) -> Result:
        return await self.call("DELETE", P + path, principal)

    async def all_pages(
        self, path: str, principal: tuple[KeyEntry, Actor], max_pages: int = 20, **query: Any
    ) -> Result:
        """Follow ``next_page`` (usage and costs) up to a bound; the buckets are concatenated."""
        first = await self.get(path, principal, **query)
        if not first.ok or not isinstance(first.data, dict):
            return first
        data = list(first.data.get("data") or [])
        nxt = first.data.get("next_page")
        pages = 1
        while first.data.get("has_more") and nxt and pages < max_pages:
            r = await self.get(path, principal, **{**query, "page": nxt})
            if not r.ok or not isinstance(r.data, dict):
                break
            data.extend(r.data.get("data") or [])
            nxt = r.data.get("next_page")
            pages += 1
            if not r.data.get("has_more"):
                break
        return Result(first.status, {**first.data, "data": data, "has_more": False})
