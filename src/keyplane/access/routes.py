"""Admin API of access policies.

OpenAI Admin API shapes (openai SDK ``admin.organization.projects.model_permissions`` and
``.hosted_tool_permissions``):

    GET/POST/DELETE  /v1/organization/projects/{project_id}/model_permissions
    GET/POST         /v1/organization/projects/{project_id}/hosted_tool_permissions

keyplane extensions, the same shapes for one API key of the project:

    GET/POST/DELETE  /v1/organization/projects/{project_id}/api_keys/{key_id}/model_permissions
    GET/POST         /v1/organization/projects/{project_id}/api_keys/{key_id}/hosted_tool_permissions
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from keyplane import control
from keyplane.access import inspect
from keyplane.access.models import AccessPolicy
from keyplane.access.policy import ModelPolicy, Policies
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.errors import bad_request, invalid_value, not_found
from keyplane.store.models import ApiKey, Project

P = "/v1/organization/projects/{project_id}"
K = P + "/api_keys/{key_id}"
MAX_MODEL_IDS = 1000


def policies(request: Request) -> Policies:
    return runtime(request).extras["access"]  # type: ignore[no-any-return]


async def _target(request: Request, s: AsyncSession) -> tuple[str, str, str]:
    """(scope, target id, project id) of the path; 404 for an unknown project or key."""
    pid = request.path_params["project_id"]
    if (await s.execute(select(Project.id).where(Project.id == pid))).scalar() is None:
        raise not_found(f"No project found with id '{pid}'.", param="project_id")
    kid = request.path_params.get("key_id")
    if kid is None:
        return "project", pid, pid
    found = (await s.execute(select(ApiKey.id).where(ApiKey.id == kid, ApiKey.project_id == pid))).scalar()
    if found is None:
        raise not_found(f"No API key found with id '{kid}' in project '{pid}'.", param="key_id")
    return "key", kid, pid


async def _stored(s: AsyncSession, kind: str, scope: str, target: str) -> AccessPolicy | None:
    return (await s.execute(select(AccessPolicy).where(
        AccessPolicy.kind == kind, AccessPolicy.scope == scope, AccessPolicy.target_id == target))).scalar()


async def _save(s: AsyncSession, kind: str, scope: str, target: str, value: dict[str, Any], now: int) -> None:
    row = await _stored(s, kind, scope, target)
    text = orjson.dumps(value).decode()
    if row is None:
        s.add(AccessPolicy(kind=kind, scope=scope, target_id=target, value=text, updated_at=now))
    else:
        row.value, row.updated_at = text, now


async def drop(s: AsyncSession, actor: control.Actor, kind: str, scope: str, target: str, project_id: str | None,
               event: str) -> None:
    """Delete one policy, audit it and move the revision: the admin API's deletes and the CLI's alike."""
    await s.execute(delete(AccessPolicy).where(AccessPolicy.kind == kind, AccessPolicy.scope == scope,
                                               AccessPolicy.target_id == target))
    await control.audit(s, actor, event, {"id": target, "scope": scope}, project_id=project_id, resource_id=target)
    await control.bump_revision(s)


async def _changed(request: Request) -> None:
    rt = runtime(request)
    await policies(request).load(rt.engine)  # this instance at once; the others through the bus (snapshot)
    if rt.publisher is not None:
        await rt.publisher.drain()


def _now(request: Request) -> int:
    return int(runtime(request).clock.now())


# --- model permissions -----------------------------------------------------------------------

def _model_policy(body: dict[str, Any]) -> ModelPolicy:
    mode = body.get("mode")
    if mode not in ("allow_list", "deny_list"):
        raise invalid_value("mode", "'mode' must be 'allow_list' or 'deny_list'.")
    ids = body.get("model_ids")
    if not isinstance(ids, list) or not all(isinstance(m, str) and 0 < len(m.strip()) <= 256 for m in ids):
        raise invalid_value("model_ids", "'model_ids' must be a list of model ids (strings of 1 to 256 characters).")
    if len(ids) > MAX_MODEL_IDS:
        raise invalid_value("model_ids", f"'model_ids' may hold at most {MAX_MODEL_IDS} ids.")
    return ModelPolicy(mode, tuple(dict.fromkeys(m.strip() for m in ids)))


async def get_models(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        scope, target, _ = await _target(request, s)
        row = await _stored(s, "model", scope, target)
    pol = ModelPolicy("deny_list", ()) if row is None else _from_row(row)
    return JSONResponse(pol.to_json())


def _from_row(row: AccessPolicy) -> ModelPolicy:
    data = orjson.loads(row.value)
    return ModelPolicy(data["mode"], tuple(data["model_ids"]))


async def update_models(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    pol = _model_policy(body)
    async with runtime(request).write() as s:
        scope, target, pid = await _target(request, s)
        await _save(s, "model", scope, target, {"mode": pol.mode, "model_ids": list(pol.model_ids)}, _now(request))
        await control.audit(s, actor, "model_permissions.updated",
                            {"id": target, "scope": scope, "changes_requested": pol.to_json()},
                            project_id=pid, resource_id=target)
        await control.bump_revision(s)
    await _changed(request)
    return JSONResponse(pol.to_json())


async def delete_models(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        scope, target, pid = await _target(request, s)
        await drop(s, actor, "model", scope, target, pid, "model_permissions.deleted")
    await _changed(request)
    return JSONResponse({"object": "project.model_permissions.deleted", "deleted": True})


# --- hosted tool permissions -----------------------------------------------------------------

def _tools_json(value: dict[str, Any]) -> dict[str, Any]:
    return {t: {"enabled": bool(value.get(t, {}).get("enabled", True))} for t in inspect.TOOLS}


async def get_tools(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        scope, target, _ = await _target(request, s)
        row = await _stored(s, "tools", scope, target)
    return JSONResponse(_tools_json({} if row is None else orjson.loads(row.value)))


async def update_tools(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    unknown = sorted(set(body) - set(inspect.TOOLS))
    if unknown:
        raise bad_request(f"Unknown hosted tool '{unknown[0]}'; known: {', '.join(inspect.TOOLS)}.",
                          param=unknown[0], code="invalid_value")
    changes: dict[str, bool] = {}
    for t, v in body.items():
        if v is None:
            continue
        if not isinstance(v, dict) or not isinstance(v.get("enabled"), bool):
            raise invalid_value(t, f"'{t}' must be an object with a boolean 'enabled'.")
        changes[t] = v["enabled"]
    async with runtime(request).write() as s:
        scope, target, pid = await _target(request, s)
        row = await _stored(s, "tools", scope, target)
        value = _tools_json({} if row is None else orjson.loads(row.value))
        for t, enabled in changes.items():
            value[t] = {"enabled": enabled}
        await _save(s, "tools", scope, target, value, _now(request))
        await control.audit(s, actor, "hosted_tool_permissions.updated",
                            {"id": target, "scope": scope, "changes_requested": {t: {"enabled": e}
                                                                                 for t, e in changes.items()}},
                            project_id=pid, resource_id=target)
        await control.bump_revision(s)
    await _changed(request)
    return JSONResponse(value)


ENDPOINTS: list[Endpoint] = [
    Endpoint(f"{P}/model_permissions", "GET", get_models, "Retrieve a project's model permissions"),
    Endpoint(f"{P}/model_permissions", "POST", update_models, "Update a project's model permissions"),
    Endpoint(f"{P}/model_permissions", "DELETE", delete_models, "Delete a project's model permissions"),
    Endpoint(f"{P}/hosted_tool_permissions", "GET", get_tools, "Retrieve a project's hosted tool permissions"),
    Endpoint(f"{P}/hosted_tool_permissions", "POST", update_tools, "Update a project's hosted tool permissions"),
    Endpoint(f"{K}/model_permissions", "GET", get_models, "Retrieve an API key's model permissions", True),
    Endpoint(f"{K}/model_permissions", "POST", update_models, "Update an API key's model permissions", True),
    Endpoint(f"{K}/model_permissions", "DELETE", delete_models, "Delete an API key's model permissions", True),
    Endpoint(f"{K}/hosted_tool_permissions", "GET", get_tools, "Retrieve an API key's hosted tool permissions", True),
    Endpoint(f"{K}/hosted_tool_permissions", "POST", update_tools, "Update an API key's hosted tool permissions",
             True),
]
