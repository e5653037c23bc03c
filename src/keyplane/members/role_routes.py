"""Admin API routes of custom roles, role assignments and groups, in the OpenAI Admin API shapes
(openai/resources/admin/organization/{roles,users/roles,groups}); the service is keyplane.members.roles and
keyplane.members.groups."""

from __future__ import annotations

from starlette.requests import Request

from keyplane import control, errors
from keyplane.admin import Endpoint, P
from keyplane.admin import shapes as admin_shapes
from keyplane.admin.common import JSONResponse, authenticate_admin, granted, json_body, runtime
from keyplane.members import groups, permissions, roles
from keyplane.members.routes import page


async def list_roles(request: Request) -> JSONResponse:
    """The predefined roles (from the one permission table), then the custom roles."""
    authenticate_admin(request)
    async with runtime(request).read() as s:
        items = await roles.all_roles(s)
    return page(request, items)


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
    return page(request, items)


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
        rows = await groups.all_groups(s)
        items = [groups.group_shape(g) for g in rows]
    return page(request, items)


async def create_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        g = await groups.create_group(s, actor, body.get("name"))
    return JSONResponse(groups.group_shape(g))


async def get_group(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        g = await groups.get_group(s, request.path_params["group_id"])
    return JSONResponse(groups.group_shape(g))


async def update_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        g = await groups.update_group(s, actor, request.path_params["group_id"], body.get("name"))
    return JSONResponse(groups.group_shape(g))


async def delete_group(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    gid = request.path_params["group_id"]
    async with runtime(request).write() as s:
        await groups.delete_group(s, actor, gid)
    return JSONResponse({"object": "group.deleted", "id": gid, "deleted": True})


async def list_group_users(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        users = await groups.group_users(s, request.path_params["group_id"])
    return page(request, [groups.group_user_shape(u) for u in users])


async def add_group_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        m = await groups.add_group_user(
            s, actor, granted(request), request.path_params["group_id"], body.get("user_id")
        )
    return JSONResponse({"object": "group.user", "group_id": m.group_id, "user_id": m.user_id})


async def get_group_user(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid, uid = request.path_params["group_id"], request.path_params["user_id"]
    async with runtime(request).read() as s:
        await groups.get_group(s, gid)
        m = await groups.group_member(s, gid, uid)
        u = await control.get_user(s, uid) if m is not None else None
    if u is None:
        raise errors.not_found(f"User '{uid}' is not a member of group '{gid}'.", param="user_id")
    return JSONResponse(groups.group_user_shape(u))


async def remove_group_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        await groups.remove_group_user(s, actor, request.path_params["group_id"], request.path_params["user_id"])
    return JSONResponse({"object": "group.user.deleted", "deleted": True})


async def list_group_roles(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid = request.path_params["group_id"]
    async with runtime(request).read() as s:
        await groups.get_group(s, gid)
        items = await roles.roles_of_group(s, gid)
    return page(request, items)


async def assign_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rid = body.get("role_id")
    if not isinstance(rid, str) or not rid:
        raise errors.bad_request("Give 'role_id'.", param="role_id", code="missing_required_parameter")
    async with runtime(request).write() as s:
        g = await groups.get_group(s, request.path_params["group_id"])
        r = await roles.assign(s, actor, granted(request), rid, "group", g.id)
    return JSONResponse({"object": "group.role", "group": groups.group_shape(g), "role": roles.role_shape(r)})


async def get_group_role(request: Request) -> JSONResponse:
    authenticate_admin(request)
    gid, rid = request.path_params["group_id"], request.path_params["role_id"]
    async with runtime(request).read() as s:
        await groups.get_group(s, gid)
        found = next((r for r in await roles.roles_of_group(s, gid) if r["id"] == rid), None)
    if found is None:
        raise errors.not_found(f"Group '{gid}' does not hold role '{rid}'.", param="role_id")
    return JSONResponse(found)


async def unassign_group_role(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        g = await groups.get_group(s, request.path_params["group_id"])
        await roles.unassign(s, actor, request.path_params["role_id"], "group", g.id)
    return JSONResponse({"object": "group.role.deleted", "deleted": True})


_G = f"{P}/groups/{{group_id}}"

ENDPOINTS: tuple[Endpoint, ...] = (
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
)
