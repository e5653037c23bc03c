"""Admin API plumbing: admin-key authentication, JSON bodies, query parameters (list shapes: keyplane.lists)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from keyplane import auth, errors
from keyplane.control import Actor
from keyplane.members import permissions as admin_permissions
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

MAX_ADMIN_BODY = 1024 * 1024
GRANTED = "keyplane.granted"  # scope key: the permissions the authenticated admin caller acts with


def granted(request: Request) -> frozenset[str]:
    """What the caller authenticated by :func:`authenticate_admin` may do (empty before it ran)."""
    return request.scope.get(GRANTED, frozenset())  # type: ignore[no-any-return]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _project_of(request: Request) -> str | None:
    """The one project a call acts on: the ``project_id`` its route matched (the id the handler uses), for
    calls under the project prefixes only. None for the rest (project lists and creation included)."""
    if not admin_permissions.is_project_call(request.url.path):
        return None
    pid = request.path_params.get("project_id")
    return pid if isinstance(pid, str) and pid else None


def _granted(rt: Runtime, entry: KeyEntry, project_id: str | None) -> frozenset[str]:
    # the key's owner's effective permissions (roles, custom roles, groups, and in a call on one project the
    # project roles they hold there) capped by the key's own role
    return admin_permissions.of_key_in_project(
        entry.permissions, entry.owner_user_id, rt.snapshot.grants, rt.snapshot.project_grants, project_id
    )


def granted_in(request: Request, entry: KeyEntry, project_id: str) -> frozenset[str]:
    """What the caller authenticated as ``entry`` could do in a call on ``project_id``: for a call that acts on
    projects its body names (an invite's ``projects``), checked as the direct call on each would be."""
    return _granted(runtime(request), entry, project_id)


def require_in_project(request: Request, entry: KeyEntry, project_id: str, method: str, path: str) -> None:
    """403 ``insufficient_permissions`` unless the caller could make the call ``method path`` on ``project_id``
    directly: for calls outside the project prefixes that hand out something inside a project (an invite's
    memberships, a federation rule's keys), which would otherwise take only an organization permission."""
    admin_permissions.check_granted(granted_in(request, entry, project_id), method, path)


def authenticate_admin(request: Request) -> tuple[KeyEntry, Actor]:
    """The admin key of the request, or an OpenAI-shaped 401."""
    rt = runtime(request)
    entry = auth.admin_entry(rt, request.scope)  # the IP allowlist, then the key (the one admin-key check)
    granted = _granted(rt, entry, _project_of(request))
    admin_permissions.check_granted(granted, request.method, request.url.path)
    request.scope[GRANTED] = granted
    rt.last_used.touch(entry.id, rt.clock.now())
    actor = Actor("api_key", entry.id, {"id": entry.id, "type": "user", "user": {"id": entry.owner_user_id}})
    return entry, actor


async def json_body(request: Request, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_ADMIN_BODY:
        raise errors.too_large(MAX_ADMIN_BODY)
    if not raw.strip():
        if required:
            raise errors.bad_request("The request body must be a JSON object.", code="invalid_body")
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.invalid_json() from None
    if not isinstance(data, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_body")
    return data


def query_list(request: Request, name: str) -> list[str]:
    """Array params as the SDKs send them (name[]=a&name[]=b), also name=a,b."""
    values = request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)
    out: list[str] = []
    for v in values:
        out.extend(x for x in v.split(",") if x)
    return out
