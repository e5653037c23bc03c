"""Admin API routes under /v1/organization, in the OpenAI Admin API shapes: projects, their service
accounts, users and the audit log; adding a user directly and assigning a provider object made outside keyplane
to a project are keyplane extensions (docs/admin-api.md).
The routes of API keys are key_routes.py; the endpoint table is keyplane.admin.
"""

from __future__ import annotations

from starlette.requests import Request

from keyplane import control
from keyplane.admin import shapes
from keyplane.admin.common import (
    JSONResponse,
    authenticate_admin,
    granted,
    json_body,
    query_list,
    runtime,
)
from keyplane.admin.params import query_bool, query_limit, query_timestamp
from keyplane.lists import list_response
from keyplane.members.permissions import require_role_grant

# --- projects ----------------------------------------------------------------------------------


async def list_projects(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    include_archived = query_bool(request, "include_archived")
    async with runtime(request).read() as s:
        rows, more = await control.list_projects(
            s, include_archived=include_archived, after=q.get("after"), limit=limit
        )
    return JSONResponse(list_response([shapes.project(p) for p in rows], more))


async def create_project(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        p = await control.create_project(s, actor, body.get("name"))
    return JSONResponse(shapes.project(p))


async def get_project(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        p = await control.get_project(s, request.path_params["project_id"])
    return JSONResponse(shapes.project(p))


async def update_project(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    async with rt.write() as s:
        reserved = rt.settings.file.project_refs()
        p = await control.update_project(s, actor, request.path_params["project_id"], body.get("name"), reserved)
    return JSONResponse(shapes.project(p))


async def archive_project(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    async with runtime(request).write() as s:
        p = await control.archive_project(s, actor, request.path_params["project_id"])
    return JSONResponse(shapes.project(p))


# --- service accounts --------------------------------------------------------------------------


async def list_service_accounts(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid = request.path_params["project_id"]
    q = request.query_params
    limit = query_limit(request, 20, 100)
    async with runtime(request).read() as s:
        rows, more = await control.list_service_accounts(s, pid, after=q.get("after"), limit=limit)
    return JSONResponse(list_response([shapes.service_account(a) for a in rows], more))


async def create_service_account(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    async with rt.write() as s:
        p = await control.get_project(s, request.path_params["project_id"])
        sa, value = await control.create_service_account(
            s,
            actor,
            p,
            body.get("name"),
            secret=rt.settings.secret_key,
            expires_in_seconds=body.get("expires_in_seconds"),
        )
    return JSONResponse(shapes.service_account_created(sa, sa.api_key_row, value))  # type: ignore[attr-defined]


async def get_service_account(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        sa = await control.get_service_account(
            s, request.path_params["project_id"], request.path_params["service_account_id"]
        )
    return JSONResponse(shapes.service_account(sa))


async def delete_service_account(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    sid = request.path_params["service_account_id"]
    async with runtime(request).write() as s:
        await control.delete_service_account(s, actor, request.path_params["project_id"], sid)
    return JSONResponse(shapes.deleted("organization.project.service_account", sid))


# --- users -------------------------------------------------------------------------------------


async def list_users(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    emails = query_list(request, "emails")
    async with runtime(request).read() as s:
        rows, more = await control.list_users(s, emails=emails, after=q.get("after"), limit=limit)
    return JSONResponse(list_response([shapes.user(u) for u in rows], more))


async def add_user(request: Request) -> JSONResponse:
    """Extension: add a user directly (the platform invites by email)."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    require_role_grant(granted(request), body.get("role"))  # no escalation (keyplane.members.permissions)
    async with runtime(request).write() as s:
        u = await control.add_user(
            s, actor, email=body.get("email"), role=body.get("role", "reader"), name=body.get("name") or ""
        )
    return JSONResponse(shapes.user(u))


async def get_user(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        u = await control.get_user(s, request.path_params["user_id"])
    return JSONResponse(shapes.user(u))


async def update_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    require_role_grant(granted(request), body.get("role"))  # no escalation (keyplane.members.permissions)
    async with runtime(request).write() as s:
        u = await control.update_user_role(s, actor, request.path_params["user_id"], body.get("role"))
    return JSONResponse(shapes.user(u))


async def delete_user(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    uid = request.path_params["user_id"]
    async with runtime(request).write() as s:
        await control.delete_user(s, actor, uid)
    return JSONResponse(shapes.deleted("organization.user", uid))


# --- audit logs --------------------------------------------------------------------------------


async def list_audit_logs(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    bounds = {op: query_timestamp(request, f"effective_at[{op}]") for op in ("gt", "gte", "lt", "lte")}
    async with runtime(request).read() as s:
        rows, more = await control.list_audit_logs(
            s,
            after=q.get("after"),
            before=q.get("before"),
            limit=limit,
            effective_at={op: t for op, t in bounds.items() if t is not None},
            project_ids=query_list(request, "project_ids"),
            event_types=query_list(request, "event_types"),
            actor_ids=query_list(request, "actor_ids"),
            resource_ids=query_list(request, "resource_ids"),
        )
        names = await control.project_names(s, {r.project_id for r in rows if r.project_id})
    return JSONResponse(list_response([shapes.audit_log(r, names.get(r.project_id or "")) for r in rows], more))


# --- provider objects made outside keyplane (keyplane extension) ---------------------------------------


async def assign_provider_object(request: Request) -> JSONResponse:
    """Own a provider object keyplane never saw created (a stored prompt, a fine-tuned model...) to a project
    (keyplane.control.provider_objects). An organization write: it hands a project an object of the provider
    account every project shares, so no project-scoped role may call it."""
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    rt = runtime(request)
    from keyplane.proxy.router import default_upstreams

    names = [u.name for u in (rt.settings.file.upstreams or default_upstreams())]
    async with rt.write() as s:
        row, _ = await control.assign_provider_object(
            s,
            actor,
            body.get("id"),
            body.get("project_id"),
            kind=body.get("kind"),
            upstream=body.get("upstream"),
            upstreams=names,
        )
    proxy = rt.features.proxy
    if proxy is not None:  # this process's proxy forgets it took the id for unknown (other instances: within 2 s)
        proxy.tenancy.store.forget_miss(row.id)
    return JSONResponse(shapes.provider_object(row, body.get("id")))
