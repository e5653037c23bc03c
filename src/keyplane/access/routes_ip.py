"""Admin API of IP allowlists (keyplane extension; docs/access-control.md):

    GET/POST/DELETE  /v1/organization/ip_allowlist
    GET/POST/DELETE  /v1/organization/projects/{project_id}/ip_allowlist
    GET/POST/DELETE  /v1/organization/projects/{project_id}/api_keys/{key_id}/ip_allowlist

POST ``{"cidrs": ["203.0.113.0/24", "2001:db8::/32"]}`` replaces the list; an empty list, or DELETE, lifts it.
"""

from __future__ import annotations

from starlette.requests import Request

from keyplane.access import service
from keyplane.access.routes import K, P, _changed, _now, _target, policies
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.errors import invalid_value

ORG = "/v1/organization/ip_allowlist"


async def get_list(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        out = await service.ip_allowlist(s, await _target(request, s))
    return JSONResponse(out)


async def set_list(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    nets, normal = service.cidr_list(body.get("cidrs"))
    confirm = body.get("confirm_lockout", False)
    if not isinstance(confirm, bool):
        raise invalid_value("confirm_lockout", "'confirm_lockout' must be a boolean.")
    if "project_id" not in request.path_params:
        seen = policies(request).address(request.scope.get("client"), request.scope["headers"])
        service.check_lockout(service.ORG, nets, seen, confirm)
    async with runtime(request).write() as s:
        out = await service.set_ip_allowlist(s, actor, await _target(request, s), normal, _now(request))
    await _changed(request)
    return JSONResponse(out)


async def delete_list(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await service.delete_ip_allowlist(s, actor, await _target(request, s))
    await _changed(request)
    return JSONResponse({"object": "ip_allowlist.deleted", "deleted": True})


ENDPOINTS: list[Endpoint] = [
    e
    for path, what in (
        (ORG, "the organization's"),
        (f"{P}/ip_allowlist", "a project's"),
        (f"{K}/ip_allowlist", "an API key's"),
    )
    for e in (
        Endpoint(path, "GET", get_list, f"Retrieve {what} IP allowlist", True),
        Endpoint(path, "POST", set_list, f"Replace {what} IP allowlist", True),
        Endpoint(path, "DELETE", delete_list, f"Lift {what} IP allowlist", True),
    )
]
