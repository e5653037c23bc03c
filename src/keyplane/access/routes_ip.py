"""Admin API of IP allowlists (keyplane extension; docs/access-control.md):

    GET/POST/DELETE  /v1/organization/ip_allowlist
    GET/POST/DELETE  /v1/organization/projects/{project_id}/ip_allowlist
    GET/POST/DELETE  /v1/organization/projects/{project_id}/api_keys/{key_id}/ip_allowlist

POST ``{"cidrs": ["203.0.113.0/24", "2001:db8::/32"]}`` replaces the list; an empty list, or DELETE, lifts it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from keyplane import control
from keyplane.access import ip
from keyplane.access.models import AccessPolicy
from keyplane.access.routes import K, P, _changed, _now, _save, _stored, _target, drop, policies
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.errors import bad_request, invalid_value

ORG = "/v1/organization/ip_allowlist"


async def _where(request: Request, s: AsyncSession) -> tuple[str, str, str | None]:
    if "project_id" not in request.path_params:
        return "org", "org", None
    return await _target(request, s)


def _json(scope: str, target: str, row: AccessPolicy | None) -> dict[str, Any]:
    cidrs = orjson.loads(row.value)["cidrs"] if row is not None else []
    return {"object": "ip_allowlist", "scope": "organization" if scope == "org" else scope,
            "id": None if scope == "org" else target, "cidrs": cidrs, "enabled": bool(cidrs),
            "updated_at": row.updated_at if row is not None else None}


async def get_list(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        scope, target, _ = await _where(request, s)
        row = await _stored(s, "ip", scope, target)
    return JSONResponse(_json(scope, target, row))


async def set_list(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    cidrs = body.get("cidrs")
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise invalid_value("cidrs", "'cidrs' must be a list of IP addresses or CIDR ranges.")
    if len(cidrs) > ip.MAX_CIDRS:
        raise invalid_value("cidrs", f"'cidrs' may hold at most {ip.MAX_CIDRS} ranges.")
    try:
        nets = ip.parse_cidrs(cidrs)
    except ValueError as e:
        raise invalid_value("cidrs", str(e)) from None
    normal = list(dict.fromkeys(str(n) for n in nets))
    confirm = body.get("confirm_lockout", False)
    if not isinstance(confirm, bool):
        raise invalid_value("confirm_lockout", "'confirm_lockout' must be a boolean.")
    if nets and "project_id" not in request.path_params and not confirm:
        # The organization's list holds the admin API and the dashboard too: a list that leaves out the
        # address this call comes from would lock its caller out (the CLI on the server lifts it).
        seen = policies(request).address(request.scope.get("client"), request.scope["headers"])
        if not ip.allows(nets, seen):
            raise bad_request(f"The list does not include the address this call comes from ({seen}): it would "
                              "lock you out of the admin API and the dashboard. Add that address, or send "
                              "\"confirm_lockout\": true (the CLI on the server can always lift the list: "
                              "keyplane access ip-allowlist clear).", param="cidrs", code="ip_allowlist_lockout")
    async with runtime(request).write() as s:
        scope, target, pid = await _where(request, s)
        await _save(s, "ip", scope, target, {"cidrs": normal}, _now(request))
        await control.audit(s, actor, "ip_allowlist.updated", {"id": target, "scope": scope,
                                                               "changes_requested": {"cidrs": normal}},
                            project_id=pid, resource_id=target)
        await control.bump_revision(s)
        row = await _stored(s, "ip", scope, target)
        out = _json(scope, target, row)
    await _changed(request)
    return JSONResponse(out)


async def delete_list(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        scope, target, pid = await _where(request, s)
        await drop(s, actor, "ip", scope, target, pid, "ip_allowlist.deleted")
    await _changed(request)
    return JSONResponse({"object": "ip_allowlist.deleted", "deleted": True})


ENDPOINTS: list[Endpoint] = [
    e for path, what in ((ORG, "the organization's"), (f"{P}/ip_allowlist", "a project's"),
                         (f"{K}/ip_allowlist", "an API key's"))
    for e in (Endpoint(path, "GET", get_list, f"Retrieve {what} IP allowlist", True),
              Endpoint(path, "POST", set_list, f"Replace {what} IP allowlist", True),
              Endpoint(path, "DELETE", delete_list, f"Lift {what} IP allowlist", True))
]
