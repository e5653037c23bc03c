"""Admin API routes of project members and service-account keys, in the OpenAI Admin API shapes
(openai/resources/admin/organization/projects/{users,service_accounts})."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request

from keyplane import control, errors
from keyplane.admin import Endpoint, P
from keyplane.admin import shapes as admin_shapes
from keyplane.admin.common import JSONResponse, authenticate_admin, granted, json_body, list_response, runtime
from keyplane.admin.params import query_limit
from keyplane.members import invites, ops, permissions, roles
from keyplane.members.models import Group, Invite, ProjectUser
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
        rows, more = await control.page(s, Invite, select(Invite), after=request.query_params.get("after"), limit=limit)
    now = rt.clock.now()
    return JSONResponse(list_response([invites.shape(i, now) for i in rows], more))


async def create_invite(request: Request) -> JSONResponse:
    """The invite, plus (keyplane extension, shown once) ``accept_url``: the one-time link to set a password."""
    _, actor = authenticate_admin(request)
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


def _page(request: Request, items: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(
        roles.page_of(items, request.query_params.get("after"), _limit(request), request.query_params.get("order"))
    )


async def list_roles(request: Request) -> JSONResponse:
    """The predefined roles (from the one permission table), then the custom roles."""
    authenticate_admin(request)
    async with runtime(request).read() as s:
        items = await roles.all_roles(s)
    return _page(request, items)


async def create_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        r = await roles.create_role(
            s,
            actor,
            granted(request),
            role_name=body.get("role_name"),
            perms=body.get("permissions"),
            description=body.get("description"),
        )
    return JSONResponse(roles.role_shape(r))


async def get_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        return JSONResponse(await roles.role_object(s, request.path_params["role_id"]))


async def update_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        r = await roles.update_role(
            s,
            actor,
            granted(request),
            request.path_params["role_id"],
            role_name=body.get("role_name"),
            perms=body.get("permissions"),
            description=body.get("description"),
            description_given="description" in body,
        )
    return JSONResponse(roles.role_shape(r))


async def delete_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    rid = request.path_params["role_id"]
    async with runtime(request).write() as s:
        await roles.delete_role(s, actor, rid)
    return JSONResponse({"object": "role.deleted", "id": rid, "deleted": True})


async def list_user_roles(request: Request) -> JSONResponse:
    """The user's organization role, then the custom roles they hold directly or through groups."""
    authenticate_admin(request)
    async with runtime(request).read() as s:
        u = await control.get_user(s, request.path_params["user_id"])
        items = await roles.roles_of_user(s, u)
    return _page(request, items)


async def get_user_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    rid = request.path_params["role_id"]
    async with runtime(request).read() as s:
        u = await control.get_user(s, request.path_params["user_id"])
        found = next((r for r in await roles.roles_of_user(s, u) if r["id"] == rid), None)
    if found is None:
        raise errors.not_found(f"User '{u.id}' does not hold role '{rid}'.", param="role_id")
    return JSONResponse(found)


async def assign_user_role(request: Request) -> JSONResponse:
    """A predefined role replaces the user's organization role (users.update(role=...) alike); a custom role
    is added to what they hold. Either way the caller must hold every permission it hands out."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rid = body.get("role_id")
    if not isinstance(rid, str) or not rid:
        raise errors.bad_request("Give 'role_id'.", param="role_id", code="missing_required_parameter")
    async with runtime(request).write() as s:
        u = await control.get_user(s, request.path_params["user_id"])
        if rid in roles.PREDEFINED:
            name = roles.PREDEFINED[rid]
            permissions.require_role_grant(granted(request), name)
            u = await control.update_user_role(s, actor, u.id, name)
            role = roles.predefined_shape(rid)
        else:
            role = roles.role_shape(await roles.assign(s, actor, granted(request), rid, "user", u.id))
    return JSONResponse({"object": "user.role", "role": role, "user": admin_shapes.user(u)})


async def unassign_user_role(request: Request) -> JSONResponse:
    """Taking ``role-owner`` away makes the user a reader; every user keeps at least ``role-reader``; a custom
    role assigned to the user directly is removed (one held through a group: remove them from the group)."""
    _, actor = authenticate_admin(request)
    rid = request.path_params["role_id"]
    async with runtime(request).write() as s:
        u = await control.get_user(s, request.path_params["user_id"])
        if rid not in roles.PREDEFINED:
            await roles.unassign(s, actor, rid, "user", u.id)
            return JSONResponse({"object": "user.role.deleted", "deleted": True})
        if roles.PREDEFINED[rid] != u.role:
            raise errors.not_found(f"User '{u.id}' does not hold role '{rid}'.", param="role_id")
        if u.role == "reader":
            raise errors.bad_request(
                "Every user holds at least the reader role; remove the user instead.",
                param="role_id",
                code="invalid_value",
            )
        await control.update_user_role(s, actor, u.id, "reader")
    return JSONResponse({"object": "user.role.deleted", "deleted": True})


# --- groups ---------------------------------------------------------------------------------------


async def list_groups(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        rows = (await s.execute(select(Group).order_by(Group.seq))).scalars()
        items = [roles.group_shape(g) for g in rows]
    return _page(request, items)


async def create_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        g = await roles.create_group(s, actor, body.get("name"))
    return JSONResponse(roles.group_shape(g))


async def get_group(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        g = await roles.get_group(s, request.path_params["group_id"])
    return JSONResponse(roles.group_shape(g))


async def update_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        g = await roles.update_group(s, actor, request.path_params["group_id"], body.get("name"))
    return JSONResponse(roles.group_shape(g))


async def delete_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    gid = request.path_params["group_id"]
    async with runtime(request).write() as s:
        await roles.delete_group(s, actor, gid)
    return JSONResponse({"object": "group.deleted", "id": gid, "deleted": True})


async def list_group_users(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        users = await roles.group_users(s, request.path_params["group_id"])
    return _page(request, [roles.group_user_shape(u) for u in users])


async def add_group_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        m = await roles.add_group_user(s, actor, granted(request), request.path_params["group_id"], body.get("user_id"))
    return JSONResponse({"object": "group.user", "group_id": m.group_id, "user_id": m.user_id})


async def get_group_user(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid, uid = request.path_params["group_id"], request.path_params["user_id"]
    async with runtime(request).read() as s:
        await roles.get_group(s, gid)
        m = await roles.group_member(s, gid, uid)
        u = await control.get_user(s, uid) if m is not None else None
    if u is None:
        raise errors.not_found(f"User '{uid}' is not a member of group '{gid}'.", param="user_id")
    return JSONResponse(roles.group_user_shape(u))


async def remove_group_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await roles.remove_group_user(s, actor, request.path_params["group_id"], request.path_params["user_id"])
    return JSONResponse({"object": "group.user.deleted", "deleted": True})


async def list_group_roles(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid = request.path_params["group_id"]
    async with runtime(request).read() as s:
        await roles.get_group(s, gid)
        items = await roles.roles_of_group(s, gid)
    return _page(request, items)


async def assign_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rid = body.get("role_id")
    if not isinstance(rid, str) or not rid:
        raise errors.bad_request("Give 'role_id'.", param="role_id", code="missing_required_parameter")
    async with runtime(request).write() as s:
        g = await roles.get_group(s, request.path_params["group_id"])
        r = await roles.assign(s, actor, granted(request), rid, "group", g.id)
    return JSONResponse({"object": "group.role", "group": roles.group_shape(g), "role": roles.role_shape(r)})


async def get_group_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid, rid = request.path_params["group_id"], request.path_params["role_id"]
    async with runtime(request).read() as s:
        await roles.get_group(s, gid)
        found = next((r for r in await roles.roles_of_group(s, gid) if r["id"] == rid), None)
    if found is None:
        raise errors.not_found(f"Group '{gid}' does not hold role '{rid}'.", param="role_id")
    return JSONResponse(found)


async def unassign_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        g = await roles.get_group(s, request.path_params["group_id"])
        await roles.unassign(s, actor, request.path_params["role_id"], "group", g.id)
    return JSONResponse({"object": "group.role.deleted", "deleted": True})


async def list_project_groups(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        rows = await roles.project_groups(s, request.path_params["project_id"])
    items = [roles.project_group_shape(pg, g) | {"id": g.id} for pg, g in rows]
    page = roles.page_of(
        items, request.query_params.get("after"), query_limit(request, 100, 1000), request.query_params.get("order")
    )
    for d in page["data"]:
        d.pop("id")
    return JSONResponse(page)


async def add_project_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        pg, g = await roles.add_project_group(
            s, actor, request.path_params["project_id"], body.get("group_id"), body.get("role")
        )
    return JSONResponse(roles.project_group_shape(pg, g))


async def get_project_group(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        pg, g = await roles.project_group(s, request.path_params["project_id"], request.path_params["group_id"])
    return JSONResponse(roles.project_group_shape(pg, g))


async def remove_project_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await roles.remove_project_group(s, actor, request.path_params["project_id"], request.path_params["group_id"])
    return JSONResponse({"object": "project.group.deleted", "deleted": True})


_PU = f"{P}/projects/{{project_id}}/users"
_SA = f"{P}/projects/{{project_id}}/service_accounts/{{service_account_id}}"
_G = f"{P}/groups/{{group_id}}"
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
    Endpoint(
        f"{P}/users/{{user_id}}/roles",
        "GET",
        list_user_roles,
        "List a user's roles (organization role, custom roles direct and through groups)",
    ),
    Endpoint(
        f"{P}/users/{{user_id}}/roles",
        "POST",
        assign_user_role,
        "Assign a role to a user (a predefined one replaces their organization role)",
    ),
    Endpoint(f"{P}/users/{{user_id}}/roles/{{role_id}}", "GET", get_user_role, "Retrieve a user's role"),
    Endpoint(
        f"{P}/users/{{user_id}}/roles/{{role_id}}",
        "DELETE",
        unassign_user_role,
        "Unassign a custom role, or role-owner (the user becomes a reader)",
    ),
    Endpoint(f"{P}/roles", "GET", list_roles, "List roles (the predefined owner and reader, then custom roles)"),
    Endpoint(f"{P}/roles", "POST", create_role, "Create a custom role (permissions from the permission table)"),
    Endpoint(f"{P}/roles/{{role_id}}", "GET", get_role, "Retrieve a role"),
    Endpoint(f"{P}/roles/{{role_id}}", "POST", update_role, "Modify a custom role (name, permissions, description)"),
    Endpoint(f"{P}/roles/{{role_id}}", "DELETE", delete_role, "Delete a custom role (its assignments go with it)"),
    Endpoint(f"{P}/groups", "GET", list_groups, "List groups"),
    Endpoint(f"{P}/groups", "POST", create_group, "Create a group"),
    Endpoint(_G, "GET", get_group, "Retrieve a group"),
    Endpoint(_G, "POST", update_group, "Rename a group"),
    Endpoint(_G, "DELETE", delete_group, "Delete a group (its members lose its roles)"),
    Endpoint(f"{_G}/users", "GET", list_group_users, "List a group's users"),
    Endpoint(f"{_G}/users", "POST", add_group_user, "Add a user to a group"),
    Endpoint(f"{_G}/users/{{user_id}}", "GET", get_group_user, "Retrieve a group's user"),
    Endpoint(f"{_G}/users/{{user_id}}", "DELETE", remove_group_user, "Remove a user from a group"),
    Endpoint(f"{_G}/roles", "GET", list_group_roles, "List a group's custom roles"),
    Endpoint(f"{_G}/roles", "POST", assign_group_role, "Assign a custom role to a group"),
    Endpoint(f"{_G}/roles/{{role_id}}", "GET", get_group_role, "Retrieve a group's role"),
    Endpoint(f"{_G}/roles/{{role_id}}", "DELETE", unassign_group_role, "Unassign a custom role from a group"),
    Endpoint(f"{P}/invites", "POST", create_invite, "Create an invite (its one-time accept_url is shown once)"),
    Endpoint(f"{P}/invites/{{invite_id}}", "GET", get_invite, "Retrieve an invite"),
    Endpoint(f"{P}/invites/{{invite_id}}", "DELETE", delete_invite, "Delete a pending invite"),
)
