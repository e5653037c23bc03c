"""Admin API of access policies.

OpenAI Admin API shapes (openai SDK ``admin.organization.projects.model_permissions`` and
``.hosted_tool_permissions``):

    GET/POST/DELETE  /v1/organization/projects/{project_id}/model_permissions
    GET/POST         /v1/organization/projects/{project_id}/hosted_tool_permissions

keyplane extensions, the same shapes for one API key of the project:

    GET/POST/DELETE  /v1/organization/projects/{project_id}/api_keys/{key_id}/model_permissions
    GET/POST         /v1/organization/projects/{project_id}/api_keys/{key_id}/hosted_tool_permissions

The checks, writes and audit entries are keyplane.access.service's (the dashboard and the CLI use them too).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from keyplane.access import service
from keyplane.access.policy import ModelPolicy, Policies
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime

P = "/v1/organization/projects/{project_id}"
K = P + "/api_keys/{key_id}"


def policies(request: Request) -> Policies:
    pols = runtime(request).features.access
    if pols is None:  # these endpoints are mounted by the access feature's start
        raise RuntimeError("the access feature is not running")
    return pols


async def _target(request: Request, s: AsyncSession) -> service.Where:
    """(scope, target id, project id) of the path (the organization's without a project); 404 for an unknown
    project or key."""
    return await service.target(s, request.path_params.get("project_id"), request.path_params.get("key_id"))


async def _changed(request: Request) -> None:
    await service.changed(runtime(request))


def _now(request: Request) -> int:
    return int(runtime(request).clock.now())


# --- model permissions -----------------------------------------------------------------------


async def get_models(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        pol = await service.model_permissions(s, await _target(request, s))
    return JSONResponse((pol or ModelPolicy("deny_list", ())).to_json())


async def update_models(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    pol = service.model_policy(body.get("mode"), body.get("model_ids"))
    async with runtime(request).write() as s:
        await service.set_model_permissions(s, actor, await _target(request, s), pol, _now(request))
    await _changed(request)
    return JSONResponse(pol.to_json())


async def delete_models(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await service.delete_model_permissions(s, actor, await _target(request, s))
    await _changed(request)
    return JSONResponse({"object": "project.model_permissions.deleted", "deleted": True})


# --- hosted tool permissions -----------------------------------------------------------------


async def get_tools(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        value = await service.tool_permissions(s, await _target(request, s))
    return JSONResponse(value)


async def update_tools(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    changes = service.tool_changes(await json_body(request))
    async with runtime(request).write() as s:
        value = await service.set_tool_permissions(s, actor, await _target(request, s), changes, _now(request))
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
    Endpoint(f"{K}/hosted_tool_permissions", "POST", update_tools, "Update an API key's hosted tool permissions", True),
]
