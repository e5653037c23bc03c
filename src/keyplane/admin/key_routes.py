"""Admin API routes of API keys under /v1/organization: a project's keys, admin keys, and the keyplane
extensions on keys (documented in docs/admin-api.md): creating user keys, updating and rotating keys,
suspending/resuming and revoking keys, looking keys up by SHA-256. The endpoint table is keyplane.admin.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from keyplane import control, errors
from keyplane.admin import shapes
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.admin.params import query_bool, query_choice, query_limit
from keyplane.lists import list_response
from keyplane.store.models import ApiKey


def _now(request: Request) -> float:
    return runtime(request).clock.now()


async def _project_key_dicts(request: Request, s: Any, rows: list[ApiKey]) -> list[dict[str, Any]]:
    users, sas = await control.key_owners(s, rows)
    now = _now(request)
    return [
        shapes.project_key(r, users.get(r.owner_user_id or ""), sas.get(r.service_account_id or ""), now) for r in rows
    ]


# --- project api keys --------------------------------------------------------------------------


async def list_project_keys(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid = request.path_params["project_id"]
    q = request.query_params
    limit = query_limit(request, 20, 100)
    include_revoked = query_bool(request, "include_revoked")
    async with runtime(request).read() as s:
        rows, more = await control.list_project_keys(
            s, pid, include_revoked=include_revoked, after=q.get("after"), limit=limit
        )
        items = await _project_key_dicts(request, s, rows)
    return JSONResponse(list_response(items, more))


async def get_project_key(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        row = await control.get_key(s, request.path_params["key_id"], request.path_params["project_id"], "project")
        (item,) = await _project_key_dicts(request, s, [row])
    return JSONResponse(item)


async def delete_project_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        row = await control.get_key(s, request.path_params["key_id"], request.path_params["project_id"], "project")
        await control.revoke_key(s, actor, row, "deleted through the admin API")
    return JSONResponse(shapes.deleted("organization.project.api_key", row.id))


async def create_project_key(request: Request) -> JSONResponse:
    """Extension: the platform has no endpoint to create a user key."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    async with rt.write() as s:
        row, value = await control.create_project_key(
            s,
            actor,
            rt.settings.secret_key,
            request.path_params["project_id"],
            name=body.get("name"),
            owner_user_id=body.get("owner_user_id"),
            permissions=body.get("permissions"),
            expires_in_seconds=body.get("expires_in_seconds"),
        )
        (item,) = await _project_key_dicts(request, s, [row])
    item["value"] = value
    return JSONResponse(item)


async def update_project_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        # The SDK sends `scopes` ([] = all, ["api.all.read"] = read only); keyplane also takes `permissions`.
        perms = body["scopes"] if "scopes" in body else body.get("permissions")
        row = await control.update_key(
            s,
            actor,
            request.path_params["key_id"],
            project_id=request.path_params["project_id"],
            name=body.get("name"),
            permissions=perms,
            expires_in_seconds=body.get("expires_in_seconds"),
        )
        (item,) = await _project_key_dicts(request, s, [row])
    return JSONResponse(item)


async def rotate_project_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request, required=False)
    rt = runtime(request)
    async with rt.write() as s:
        new, value, old = await control.rotate_key(
            s,
            actor,
            rt.settings.secret_key,
            request.path_params["key_id"],
            project_id=request.path_params["project_id"],
            grace_seconds=body.get("grace_period_seconds"),
        )
        (item,) = await _project_key_dicts(request, s, [new])
    item["value"] = value
    item["rotated_from"] = {"id": old.id, "expires_at": old.expires_at, "revoked_at": old.revoked_at}
    return JSONResponse(item)


async def _suspend_or_resume(request: Request, suspend: bool) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request, required=False)
    reason = body.get("reason") or "suspended through the admin API"
    if not isinstance(reason, str) or len(reason) > 1000:
        raise errors.bad_request("'reason' must be a string of at most 1000 characters.", param="reason")
    async with runtime(request).write() as s:
        row = await control.get_key(s, request.path_params["key_id"], request.path_params.get("project_id"), "project")
        await control.set_suspended(s, actor, row, reason if suspend else None)
        (item,) = await _project_key_dicts(request, s, [row])
    return JSONResponse(item)


async def suspend_key(request: Request) -> JSONResponse:
    return await _suspend_or_resume(request, True)


async def resume_key(request: Request) -> JSONResponse:
    return await _suspend_or_resume(request, False)


async def revoke_any_key(request: Request) -> JSONResponse:
    """Extension: POST /v1/organization/api_keys/{key_id}/revoke {"reason"} (used by the leak scanner)."""
    _, actor = authenticate_admin(request)
    body = await json_body(request, required=False)
    reason = body.get("reason") or "revoked through the admin API"
    if not isinstance(reason, str) or len(reason) > 1000:
        raise errors.bad_request("'reason' must be a string of at most 1000 characters.", param="reason")
    async with runtime(request).write() as s:
        row = await control.get_key(s, request.path_params["key_id"])
        await control.revoke_key(s, actor, row, reason)
        if row.kind == "admin":
            users, _ = await control.key_owners(s, [row])
            item = shapes.admin_key(row, users.get(row.owner_user_id or ""), _now(request))
        else:
            (item,) = await _project_key_dicts(request, s, [row])
    return JSONResponse(item)


async def lookup_keys(request: Request) -> JSONResponse:
    """Extension: which of these SHA-256(key) values are keys of this deployment, and their status."""
    authenticate_admin(request)
    body = await json_body(request)
    hashes = control.validate_sha256_list(body.get("sha256"))
    rt = runtime(request)
    async with rt.read() as s:
        found = await control.lookup_sha256(s, rt.settings.secret_key, hashes)
    now = _now(request)
    data = [
        {
            "object": "organization.api_key.lookup",
            "sha256": h,
            "id": r.id,
            "project_id": r.project_id,
            "kind": r.kind,
            "name": r.name,
            "status": shapes.key_status(r, now),
        }
        for h, r in found
    ]
    return JSONResponse({"object": "list", "data": data})


# --- admin api keys ----------------------------------------------------------------------------


async def list_admin_keys(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    descending = query_choice(request, "order", ("asc", "desc"), "asc") == "desc"
    async with runtime(request).read() as s:
        rows, more = await control.list_admin_keys(s, after=q.get("after"), limit=limit, descending=descending)
        users, _ = await control.key_owners(s, rows)
    now = _now(request)
    return JSONResponse(list_response([shapes.admin_key(r, users.get(r.owner_user_id or ""), now) for r in rows], more))


async def create_admin_key(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    async with rt.write() as s:
        row, value = await control.create_admin_key(
            s,
            actor,
            rt.settings.secret_key,
            body.get("name"),
            owner_user_id=entry.owner_user_id,
            expires_in_seconds=body.get("expires_in_seconds"),
            role=body.get("role"),
        )
        users, _ = await control.key_owners(s, [row])
    d = shapes.admin_key(row, users.get(row.owner_user_id or ""), _now(request))
    d["value"] = value
    return JSONResponse(d)


async def get_admin_key(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        row = await control.get_key(s, request.path_params["key_id"], kind="admin")
        users, _ = await control.key_owners(s, [row])
    return JSONResponse(shapes.admin_key(row, users.get(row.owner_user_id or ""), _now(request)))


async def delete_admin_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    kid = request.path_params["key_id"]
    async with runtime(request).write() as s:
        row = await control.get_key(s, kid, kind="admin")
        await control.revoke_key(s, actor, row, "deleted through the admin API")
    return JSONResponse(shapes.deleted("organization.admin_api_key", kid))
