"""The federation rules of a workload identity provider (admin API, in the SDK's shapes):

    GET/POST          /v1/organization/workload_identity_providers/{id}/federation_rules[/{rule_id}]

Each rule owns a keyless key row of its service account: its limits, usage and snapshot entry.
The endpoint table is keyplane.identity.routes.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request

from keyplane import control, ids
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.admin.params import query_limit
from keyplane.identity import queries
from keyplane.identity.admin_common import (
    WIDENS_RULE,
    changed,
    now,
    require_keys_of,
    widens,
)
from keyplane.identity.admin_shapes import rule_json, valid_enabled, valid_matchers, valid_permissions, valid_text
from keyplane.identity.models import FederationRuleRow
from keyplane.identity.queries import find_provider, find_rule
from keyplane.lists import list_response
from keyplane.scopes import parse_permissions


async def list_rules(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid = request.path_params["provider_id"]
    q = request.query_params
    async with runtime(request).read() as s:
        rows, more = await queries.list_rules(
            s,
            pid,
            service_account_id=q.get("service_account_id"),
            after=q.get("after"),
            limit=query_limit(request, 20, 100),
            descending=q.get("order", "desc") != "asc",
        )
    return JSONResponse(list_response([rule_json(r) for r in rows], more))


async def create_rule(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    rt = runtime(request)
    b = await json_body(request)
    pid = request.path_params["provider_id"]
    project_id, sa_id = (
        valid_text(b.get("project_id"), "project_id"),
        valid_text(b.get("service_account_id"), "service_account_id"),
    )
    require_keys_of(request, entry, project_id, sa_id)
    matchers = valid_matchers(b.get("attribute_matchers"))
    shown, key_perms = valid_permissions(b.get("permissions"))
    name = control.check_name(b.get("name"), required=False)
    t = now(request)
    async with rt.write() as s:
        await find_provider(s, pid)
        control.ensure_active(await control.get_project(s, project_id))
        await control.get_service_account(s, project_id, sa_id)
        rid = ids.new_id("wifr_")
        # The rule's keyless key row: limits, usage and the snapshot entry; its value is discarded unseen.
        key, _ = control.new_key_row(
            rt.settings.secret_key,
            "svc",
            f"workload identity: {name or rid}",
            project_id=project_id,
            owner_user_id=None,
            service_account_id=sa_id,
            permissions=parse_permissions("all"),
            expires_at=None,
            at=t,
        )
        key.permissions = key_perms
        s.add(key)
        r = FederationRuleRow(
            id=rid,
            provider_id=pid,
            project_id=project_id,
            service_account_id=sa_id,
            key_id=key.id,
            name=name,
            description=b.get("description"),
            enabled=valid_enabled(b.get("enabled"), True),
            attribute_matchers=orjson.dumps(matchers).decode(),
            permissions=orjson.dumps(shown).decode(),
            created_at=t,
            updated_at=t,
        )
        s.add(r)
        await control.audit(
            s,
            actor,
            "workload_identity_federation_rule.created",
            {"id": rid, "provider_id": pid, "service_account_id": sa_id, "matchers": matchers},
            project_id=project_id,
            resource_id=rid,
            at=t,
        )
        await control.bump_revision(s)
    await changed(request)
    return JSONResponse(rule_json(r))


async def get_rule(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        r = await find_rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
    return JSONResponse(rule_json(r))


async def update_rule(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    b = await json_body(request)
    t = now(request)
    async with runtime(request).write() as s:
        r = await find_rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
        if widens(b, WIDENS_RULE):
            require_keys_of(request, entry, r.project_id, r.service_account_id)
        if "attribute_matchers" in b:
            r.attribute_matchers = orjson.dumps(valid_matchers(b["attribute_matchers"])).decode()
        if "enabled" in b:
            r.enabled = valid_enabled(b["enabled"], r.enabled)
        if "name" in b:
            r.name = control.check_name(b["name"], required=False)
        if "description" in b:
            r.description = b["description"] if isinstance(b["description"], str) else None
        if "permissions" in b:
            shown, key_perms = valid_permissions(b["permissions"])
            r.permissions = orjson.dumps(shown).decode()
            key = await control.key_by_id(s, r.key_id)
            if key is not None:
                key.permissions, key.updated_at = key_perms, t
        r.updated_at = t
        await control.audit(
            s,
            actor,
            "workload_identity_federation_rule.updated",
            {"id": r.id, "changes": sorted(b)},
            project_id=r.project_id,
            resource_id=r.id,
            at=t,
        )
        await control.bump_revision(s)
    await changed(request)
    return JSONResponse(rule_json(r))


async def delete_rule(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    t = now(request)
    async with runtime(request).write() as s:
        r = await find_rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
        key = await control.key_by_id(s, r.key_id)
        if key is not None and key.revoked_at is None:
            key.revoked_at, key.revoke_reason, key.updated_at = t, "federation rule deleted", t
        await s.delete(r)
        await control.audit(
            s,
            actor,
            "workload_identity_federation_rule.deleted",
            {"id": r.id},
            project_id=r.project_id,
            resource_id=r.id,
            at=t,
        )
        await control.bump_revision(s)
    await changed(request)
    return JSONResponse(
        {"object": "organization.workload_identity_federation_rule.deleted", "id": r.id, "deleted": True}
    )
