"""Admin API routes of project members and service-account keys, in the OpenAI Admin API shapes
(openai/resources/admin/organization/projects/{users,service_accounts})."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from keyplane.admin import Endpoint, P
from keyplane.admin import shapes as admin_shapes
from keyplane.admin.common import (
    JSONResponse,
    authenticate_admin,
    granted,
    granted_in,
    json_body,
    runtime,
)
from keyplane.admin.params import query_limit
from keyplane.lists import cursor_page, list_response
from keyplane.members import groups, invites, ops, permissions
from keyplane.members.models import ProjectUser
from keyplane.store.models import ApiKey, User


def project_user(m: ProjectUser, u: User) -> dict[str, Any]:
    return {
        "object": "organization.project.user",
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "role": m.role,
        "added_at": m.added_at,
    }


def service_account_key(k: ApiKey, value: str) -> dict[str, Any]:
    return {
        "object": "organization.project.service_account.api_key",
        "id": k.id,
        "name": k.name,
        "value": value,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
    }


async def list_project_users(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    async with runtime(request).read() as s:
        rows, more = await ops.list_project_users(
            s, request.path_params["project_id"], after=request.query_params.get("after"), limit=limit
        )
    return JSONResponse(list_response([project_user(m, u) for m, u in rows], more))


async def create_project_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        m, u = await ops.add_project_user(
            s,
            actor,
            request.path_params["project_id"],
            role=body.get("role"),
            user_id=body.get("user_id"),
            email=body.get("email"),
        )
    return JSONResponse(project_user(m, u))


async def get_project_user(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        m, u = await ops.get_project_user(s, request.path_params["project_id"], request.path_params["user_id"])
    return JSONResponse(project_user(m, u))


async def update_project_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        m, u = await ops.update_project_user(
            s, actor, request.path_params["project_id"], request.path_params["user_id"], body.get("role")
        )
    return JSONResponse(project_user(m, u))


async def delete_project_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    uid = request.path_params["user_id"]
    async with runtime(request).write() as s:
        await ops.remove_project_user(s, actor, request.path_params["project_id"], uid)
    return JSONResponse(admin_shapes.deleted("organization.project.user", uid))


async def create_service_account_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request, required=False)
    rt = runtime(request)
    async with rt.write() as s:
        row, value = await ops.create_service_account_key(
            s,
            actor,
            rt.settings.secret_key,
            request.path_params["project_id"],
            request.path_params["service_account_id"],
            name=body.get("name"),
            scopes=body.get("scopes"),
            expires_in_seconds=body.get("expires_in_seconds"),
        )
    return JSONResponse(service_account_key(row, value))


async def update_service_account(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        sa = await ops.update_service_account(
            s,
            actor,
            request.path_params["project_id"],
            request.path_params["service_account_id"],
            name=body.get("name"),
            role=body.get("role"),
        )
    return JSONResponse(admin_shapes.service_account(sa))


async def list_invites(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    rt = runtime(request)
    async with rt.read() as s:
        rows, more = await invites.list_invites(s, after=request.query_params.get("after"), limit=limit)
    now = rt.clock.now()
    return JSONResponse(list_response([invites.shape(i, now) for i in rows], more))


async def create_invite(request: Request) -> JSONResponse:
    """The invite, plus (keyplane extension, shown once) ``accept_url``: the one-time link to set a password."""
    entry, actor = authenticate_admin(request)
    body = await json_body(request)
    permissions.require_role_grant(granted(request), body.get("role"))
    rt = runtime(request)
    async with rt.write() as s:
        inv, token = await invites.create_invite(
            s,
            actor,
            rt.settings.secret_key,
            email=body.get("email"),
            role=body.get("role"),
            projects=body.get("projects"),
            granted_in=lambda pid: granted_in(request, entry, pid),
        )
    d = invites.shape(inv, rt.clock.now())
    d["accept_url"] = str(request.base_url).rstrip("/") + invites.ACCEPT_PATH + token
    return JSONResponse(d)


async def get_invite(request: Request) -> JSONResponse:
    authenticate_admin(request)
    rt = runtime(request)
    async with rt.read() as s:
        inv = await invites.get_invite(s, request.path_params["invite_id"])
    return JSONResponse(invites.shape(inv, rt.clock.now()))


async def delete_invite(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    iid = request.path_params["invite_id"]
    async with runtime(request).write() as s:
        await invites.delete_invite(s, actor, iid)
    return JSONResponse(admin_shapes.deleted("organization.invite", iid))


def _limit(request: Request) -> int:
    return query_limit(request, 1000, 1000)


def page(request: Request, items: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(
        cursor_page(items, request.query_params.get("after"), _limit(request), request.query_params.get("order"))
    )


async def list_project_groups(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        rows = await groups.project_groups(s, request.path_params["project_id"])
    items = [groups.project_group_shape(pg, g) | {"id": g.id} for pg, g in rows]
    out = cursor_page(
        items, request.query_params.get("after"), query_limit(request, 100, 1000), request.query_params.get("order")
    )
    for d in out["data"]:
        d.pop("id")
    return JSONResponse(out)


async def add_project_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        pg, g = await groups.add_project_group(
            s, actor, request.path_params["project_id"], body.get("group_id"), body.get("role")
        )
    return JSONResponse(groups.project_group_shape(pg, g))


async def get_project_group(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        pg, g = await groups.project_group(s, request.path_params["project_id"], request.path_params["group_id"])
    return JSONResponse(groups.project_group_shape(pg, g))


async def remove_project_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await groups.remove_project_group(s, actor, request.path_params["project_id"], request.path_params["group_id"])
    return JSONResponse({"object": "project.group.deleted", "deleted": True})


_PU = f"{P}/projects/{{project_id}}/users"
_SA = f"{P}/projects/{{project_id}}/service_accounts/{{service_account_id}}"
_PG = f"{P}/projects/{{project_id}}/groups"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(_PU, "GET", list_project_users, "List project users"),
    Endpoint(_PU, "POST", create_project_user, "Add a user to a project (role owner or member)"),
    Endpoint(f"{_PU}/{{user_id}}", "GET", get_project_user, "Retrieve a project user"),
    Endpoint(f"{_PU}/{{user_id}}", "POST", update_project_user, "Modify a project user's role"),
    Endpoint(
        f"{_PU}/{{user_id}}",
        "DELETE",
        delete_project_user,
        "Remove a user from a project (their user keys in it are revoked)",
    ),
    Endpoint(_PG, "GET", list_project_groups, "List the groups that are members of a project"),
    Endpoint(_PG, "POST", add_project_group, "Add a group to a project (role owner or member)"),
    Endpoint(f"{_PG}/{{group_id}}", "GET", get_project_group, "Retrieve a project group"),
    Endpoint(
        f"{_PG}/{{group_id}}",
        "DELETE",
        remove_project_group,
        "Remove a group from a project (its users' keys there are revoked unless they still reach it)",
    ),
    Endpoint(_SA, "POST", update_service_account, "Modify a service account (name, role)"),
    Endpoint(
        f"{_SA}/api_keys",
        "POST",
        create_service_account_key,
        "Create another API key for a service account (value shown once)",
    ),
    Endpoint(f"{P}/invites", "GET", list_invites, "List invites"),
    Endpoint(f"{P}/invites", "POST", create_invite, "Create an invite (its one-time accept_url is shown once)"),
    Endpoint(f"{P}/invites/{{invite_id}}", "GET", get_invite, "Retrieve an invite"),
    Endpoint(f"{P}/invites/{{invite_id}}", "DELETE", delete_invite, "Delete a pending invite"),
)
