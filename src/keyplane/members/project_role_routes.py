"""Admin API routes of project-scoped roles, in the official SDK's paths and shapes
(openai/resources/admin/organization/projects/{roles,users/roles,groups/roles}): the SDK calls them under
``/v1/projects/{project_id}/...``; keyplane answers the same calls under ``/v1/organization/projects/...`` too.

Every call acts on one project: the permission table asks ``api.project.read``/``.write``, which the caller
may hold organization-wide or through a project role of that very project (keyplane.admin.common)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from keyplane import control, errors
from keyplane.admin import Endpoint, P
from keyplane.admin import shapes as admin_shapes
from keyplane.admin.common import JSONResponse, authenticate_admin, granted, json_body, runtime
from keyplane.members import groups, project_roles
from keyplane.members.routes import page


def _found(items: list[dict[str, Any]], role_id: str, who: str) -> dict[str, Any]:
    found = next((r for r in items if r["id"] == role_id), None)
    if found is None:
        raise errors.not_found(f"{who} does not hold role '{role_id}'.", param="role_id")
    return found


# --- projects.roles ----------------------------------------------------------------------------------


async def list_project_roles(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        items = await project_roles.list_roles(s, request.path_params["project_id"])
    return page(request, items)


async def create_project_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        r = await project_roles.create_role(
            s,
            actor,
            granted(request),
            request.path_params["project_id"],
            role_name=body.get("role_name"),
            perms=body.get("permissions"),
            description=body.get("description"),
        )
    return JSONResponse(project_roles.shape(r))


async def get_project_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        r = await project_roles.get_role(s, request.path_params["project_id"], request.path_params["role_id"])
    return JSONResponse(project_roles.shape(r))


async def update_project_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        r = await project_roles.update_role(
            s,
            actor,
            granted(request),
            request.path_params["project_id"],
            request.path_params["role_id"],
            role_name=body.get("role_name"),
            perms=body.get("permissions"),
            description=body.get("description"),
            description_given="description" in body,
        )
    return JSONResponse(project_roles.shape(r))


async def delete_project_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    rid = request.path_params["role_id"]
    async with runtime(request).write() as s:
        await project_roles.delete_role(s, actor, request.path_params["project_id"], rid)
    return JSONResponse({"object": "role.deleted", "id": rid, "deleted": True})


# --- projects.users.roles ------------------------------------------------------------------------------


async def list_project_user_roles(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        items = await project_roles.roles_of_user(s, request.path_params["project_id"], request.path_params["user_id"])
    return page(request, items)


async def get_project_user_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid, uid = request.path_params["project_id"], request.path_params["user_id"]
    async with runtime(request).read() as s:
        items = await project_roles.roles_of_user(s, pid, uid)
    return JSONResponse(_found(items, request.path_params["role_id"], f"User '{uid}' in project '{pid}'"))


async def assign_project_user_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    pid, uid = request.path_params["project_id"], request.path_params["user_id"]
    async with runtime(request).write() as s:
        r = await project_roles.assign(s, actor, granted(request), pid, body.get("role_id"), "user", uid)
        u = await control.get_user(s, uid)
    return JSONResponse({"object": "user.role", "role": project_roles.shape(r), "user": admin_shapes.user(u)})


async def unassign_project_user_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await project_roles.unassign(
            s,
            actor,
            request.path_params["project_id"],
            request.path_params["role_id"],
            "user",
            request.path_params["user_id"],
        )
    return JSONResponse({"object": "user.role.deleted", "deleted": True})


# --- projects.groups.roles -----------------------------------------------------------------------------


async def list_project_group_roles(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        items = await project_roles.roles_of_group(
            s, request.path_params["project_id"], request.path_params["group_id"]
        )
    return page(request, items)


async def get_project_group_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid, gid = request.path_params["project_id"], request.path_params["group_id"]
    async with runtime(request).read() as s:
        items = await project_roles.roles_of_group(s, pid, gid)
    return JSONResponse(_found(items, request.path_params["role_id"], f"Group '{gid}' in project '{pid}'"))


async def assign_project_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    pid, gid = request.path_params["project_id"], request.path_params["group_id"]
    async with runtime(request).write() as s:
        r = await project_roles.assign(s, actor, granted(request), pid, body.get("role_id"), "group", gid)
        g = await groups.get_group(s, gid)
    return JSONResponse({"object": "group.role", "group": groups.group_shape(g), "role": project_roles.shape(r)})


async def unassign_project_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await project_roles.unassign(
            s,
            actor,
            request.path_params["project_id"],
            request.path_params["role_id"],
            "group",
            request.path_params["group_id"],
        )
    return JSONResponse({"object": "group.role.deleted", "deleted": True})


_R, _U, _G = "{project_id}/roles", "{project_id}/users/{user_id}/roles", "{project_id}/groups/{group_id}/roles"
_TABLE: tuple[tuple[str, str, Any, str], ...] = (
    (_R, "GET", list_project_roles, "List a project's roles"),
    (_R, "POST", create_project_role, "Create a project role (api.project.* permissions only)"),
    (f"{_R}/{{role_id}}", "GET", get_project_role, "Retrieve a project role"),
    (f"{_R}/{{role_id}}", "POST", update_project_role, "Modify a project role"),
    (f"{_R}/{{role_id}}", "DELETE", delete_project_role, "Delete a project role (its assignments go with it)"),
    (_U, "GET", list_project_user_roles, "List a user's project roles in the project (direct and through groups)"),
    (_U, "POST", assign_project_user_role, "Assign a project role to a project user"),
    (f"{_U}/{{role_id}}", "GET", get_project_user_role, "Retrieve a project user's project role"),
    (f"{_U}/{{role_id}}", "DELETE", unassign_project_user_role, "Unassign a project role from a project user"),
    (_G, "GET", list_project_group_roles, "List a project group's project roles"),
    (_G, "POST", assign_project_group_role, "Assign a project role to a project group"),
    (f"{_G}/{{role_id}}", "GET", get_project_group_role, "Retrieve a project group's project role"),
    (f"{_G}/{{role_id}}", "DELETE", unassign_project_group_role, "Unassign a project role from a project group"),
)


def _alias(handler: Any) -> Any:
    """The same handler under another name (each OpenAPI operation keeps its own ``operationId``)."""

    async def alias(request: Request) -> JSONResponse:
        return await handler(request)

    alias.__name__ = alias.__qualname__ = f"{handler.__name__}_in_organization"
    return alias


# The SDK's paths (the platform's), then the same calls in keyplane's admin namespace.
ENDPOINTS: tuple[Endpoint, ...] = (
    *(Endpoint(f"/v1/projects/{path}", method, h, summary) for path, method, h, summary in _TABLE),
    *(Endpoint(f"{P}/projects/{path}", method, _alias(h), summary, True) for path, method, h, summary in _TABLE),
)
