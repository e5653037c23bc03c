"""Admin API routes of project members and service-account keys, in the OpenAI Admin API shapes
(openai/resources/admin/organization/projects/{users,service_accounts})."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request

from keyplane import control, errors
from keyplane.admin import Endpoint, P
from keyplane.admin import shapes as admin_shapes
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, list_response, runtime
from keyplane.admin.params import query_limit
from keyplane.members import invites, ops, permissions
from keyplane.members.models import Invite, ProjectUser
from keyplane.store.models import ApiKey, User


def project_user(m: ProjectUser, u: User) -> dict[str, Any]:
    return {"object": "organization.project.user", "id": u.id, "name": u.name, "email": u.email,
            "role": m.role, "added_at": m.added_at}


def service_account_key(k: ApiKey, value: str) -> dict[str, Any]:
    return {"object": "organization.project.service_account.api_key", "id": k.id, "name": k.name,
            "value": value, "created_at": k.created_at, "expires_at": k.expires_at}


async def list_project_users(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    async with runtime(request).read() as s:
        rows, more = await ops.list_project_users(s, request.path_params["project_id"],
                                                  after=request.query_params.get("after"), limit=limit)
    return JSONResponse(list_response([project_user(m, u) for m, u in rows], more))


async def create_project_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        m, u = await ops.add_project_user(s, actor, request.path_params["project_id"], role=body.get("role"),
                                          user_id=body.get("user_id"), email=body.get("email"))
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
        m, u = await ops.update_project_user(s, actor, request.path_params["project_id"],
                                             request.path_params["user_id"], body.get("role"))
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
            s, actor, rt.settings.secret_key, request.path_params["project_id"],
            request.path_params["service_account_id"], name=body.get("name"), scopes=body.get("scopes"),
            expires_in_seconds=body.get("expires_in_seconds"))
    return JSONResponse(service_account_key(row, value))


async def update_service_account(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        sa = await ops.update_service_account(s, actor, request.path_params["project_id"],
                                              request.path_params["service_account_id"], name=body.get("name"),
                                              role=body.get("role"))
    return JSONResponse(admin_shapes.service_account(sa))


async def list_invites(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    rt = runtime(request)
    async with rt.read() as s:
        rows, more = await control.page(s, Invite, select(Invite), after=request.query_params.get("after"),
                                        limit=limit)
    now = rt.clock.now()
    return JSONResponse(list_response([invites.shape(i, now) for i in rows], more))


async def create_invite(request: Request) -> JSONResponse:
    """The invite, plus (keyplane extension, shown once) ``accept_url``: the one-time link to set a password."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    async with rt.write() as s:
        inv, token = await invites.create_invite(s, actor, rt.settings.secret_key, email=body.get("email"),
                                                 role=body.get("role"), projects=body.get("projects"))
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


async def list_roles(request: Request) -> JSONResponse:
    """The predefined roles and their permissions, from the one permission table (custom roles: not yet)."""
    authenticate_admin(request)
    data = permissions.role_objects()
    return JSONResponse({"object": "list", "data": data, "has_more": False, "next": None})


def _role(role_id: str) -> dict[str, object]:
    found = next((r for r in permissions.role_objects() if r["id"] == role_id), None)
    if found is None:
        raise errors.not_found(f"No role found with id '{role_id}' (roles: role-owner, role-reader).",
                               param="role_id")
    return found


async def list_user_roles(request: Request) -> JSONResponse:
    """A user holds exactly one organization role (owner or reader)."""
    authenticate_admin(request)
    async with runtime(request).read() as s:
        u = await control.get_user(s, request.path_params["user_id"])
    return JSONResponse({"object": "list", "data": [_role(f"role-{u.role}")], "has_more": False, "next": None})


async def get_user_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    role = _role(request.path_params["role_id"])
    async with runtime(request).read() as s:
        u = await control.get_user(s, request.path_params["user_id"])
    if role["name"] != u.role:
        raise errors.not_found(f"User '{u.id}' does not hold role '{role['id']}'.", param="role_id")
    return JSONResponse(role)


async def assign_user_role(request: Request) -> JSONResponse:
    """Assigning a predefined role replaces the user's organization role (users.update(role=...) alike)."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    role = _role(str(body.get("role_id") or ""))
    async with runtime(request).write() as s:
        u = await control.update_user_role(s, actor, request.path_params["user_id"], role["name"])
    return JSONResponse({"object": "user.role", "role": role, "user": admin_shapes.user(u)})


async def unassign_user_role(request: Request) -> JSONResponse:
    """Taking ``role-owner`` away makes the user a reader; every user keeps at least ``role-reader``."""
    _, actor = authenticate_admin(request)
    role = _role(request.path_params["role_id"])
    async with runtime(request).write() as s:
        u = await control.get_user(s, request.path_params["user_id"])
        if role["name"] != u.role:
            raise errors.not_found(f"User '{u.id}' does not hold role '{role['id']}'.", param="role_id")
        if role["name"] == "reader":
            raise errors.bad_request("Every user holds at least the reader role; remove the user instead.",
                                     param="role_id", code="invalid_value")
        await control.update_user_role(s, actor, u.id, "reader")
    return JSONResponse({"object": "user.role.deleted", "deleted": True})


_PU = f"{P}/projects/{{project_id}}/users"
_SA = f"{P}/projects/{{project_id}}/service_accounts/{{service_account_id}}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(_PU, "GET", list_project_users, "List project users"),
    Endpoint(_PU, "POST", create_project_user, "Add a user to a project (role owner or member)"),
    Endpoint(f"{_PU}/{{user_id}}", "GET", get_project_user, "Retrieve a project user"),
    Endpoint(f"{_PU}/{{user_id}}", "POST", update_project_user, "Modify a project user's role"),
    Endpoint(f"{_PU}/{{user_id}}", "DELETE", delete_project_user,
             "Remove a user from a project (their user keys in it are revoked)"),
    Endpoint(_SA, "POST", update_service_account, "Modify a service account (name, role)"),
    Endpoint(f"{_SA}/api_keys", "POST", create_service_account_key,
             "Create another API key for a service account (value shown once)"),
    Endpoint(f"{P}/invites", "GET", list_invites, "List invites"),
    Endpoint(f"{P}/users/{{user_id}}/roles", "GET", list_user_roles, "List a user's organization role"),
    Endpoint(f"{P}/users/{{user_id}}/roles", "POST", assign_user_role,
             "Assign a predefined role to a user (replaces their organization role)"),
    Endpoint(f"{P}/users/{{user_id}}/roles/{{role_id}}", "GET", get_user_role, "Retrieve a user's role"),
    Endpoint(f"{P}/users/{{user_id}}/roles/{{role_id}}", "DELETE", unassign_user_role,
             "Unassign role-owner (the user becomes a reader)"),
    Endpoint(f"{P}/roles", "GET", list_roles, "List roles (the predefined owner and reader, with their permissions)"),
    Endpoint(f"{P}/invites", "POST", create_invite, "Create an invite (its one-time accept_url is shown once)"),
    Endpoint(f"{P}/invites/{{invite_id}}", "GET", get_invite, "Retrieve an invite"),
    Endpoint(f"{P}/invites/{{invite_id}}", "DELETE", delete_invite, "Delete a pending invite"),
)
