"""Admin API of workload identity federation, in the SDK's shapes
(openai/resources/admin/organization/workload_identity_providers):

    GET/POST          /v1/organization/workload_identity_providers[/{id}]            (DELETE on {id})
    GET/POST          /v1/organization/workload_identity_providers/{id}/federation_rules[/{rule_id}]

This module holds the providers' routes and the endpoint table of both; the rules' routes are
rule_routes.py, the JSON shapes and field checks admin_shapes.py, what they share admin_common.py, their
queries queries.py.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request

from keyplane import control, ids
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import bad_request, conflict
from keyplane.identity import queries
from keyplane.identity.admin_common import (
    WIDENS_PROVIDER,
    changed,
    jwks,
    now,
    require_keys_of,
    widens,
)
from keyplane.identity.admin_shapes import (
    provider_json,
    valid_enabled,
    valid_text,
    valid_transformations,
    valid_url,
    valid_verification,
)
from keyplane.identity.models import WorkloadIdentityProviderRow
from keyplane.identity.queries import find_provider, has_rules, rule_targets
from keyplane.identity.rule_routes import create_rule, delete_rule, get_rule, list_rules, update_rule
from keyplane.lists import list_response

P = "/v1/organization/workload_identity_providers"


async def list_providers(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    desc = request.query_params.get("order", "desc") != "asc"
    async with runtime(request).read() as s:
        rows, more = await queries.list_providers(
            s, after=request.query_params.get("after"), limit=limit, descending=desc
        )
    return JSONResponse(list_response([provider_json(p) for p in rows], more))


async def create_provider(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    b = await json_body(request)
    if b.get("type") != "oidc":
        raise bad_request("'type' must be 'oidc'.", param="type", code="invalid_value")
    t = now(request)
    p = WorkloadIdentityProviderRow(
        id=ids.new_id("wip_"),
        name=control.check_name(b.get("name")),
        description=b.get("description"),
        issuer=valid_url(b.get("issuer"), "issuer"),
        audience=valid_text(b.get("audience"), "audience"),
        enabled=valid_enabled(b.get("enabled"), True),
        verification=orjson.dumps(valid_verification(b.get("verification"))).decode(),
        attribute_transformations=orjson.dumps(valid_transformations(b.get("attribute_transformations"))).decode(),
        created_at=t,
        updated_at=t,
    )
    async with runtime(request).write() as s:
        s.add(p)
        await control.audit(
            s, actor, "workload_identity_provider.created", {"id": p.id, "issuer": p.issuer}, resource_id=p.id, at=t
        )
        await control.bump_revision(s)
    await changed(request)
    return JSONResponse(provider_json(p))


async def get_provider(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        p = await find_provider(s, request.path_params["provider_id"])
    return JSONResponse(provider_json(p))


async def update_provider(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    b = await json_body(request)
    t = now(request)
    async with runtime(request).write() as s:
        p = await find_provider(s, request.path_params["provider_id"])
        if widens(b, WIDENS_PROVIDER):  # another issuer or audience: other tokens match every rule of it
            for project_id, sa_id in sorted(set(await rule_targets(s, p.id))):
                require_keys_of(request, entry, project_id, sa_id)
        if "name" in b:
            p.name = control.check_name(b["name"]) or p.name
        if "description" in b:
            p.description = b["description"] if isinstance(b["description"], str) else None
        if "issuer" in b:
            p.issuer = valid_url(b["issuer"], "issuer")
        if "audience" in b:
            p.audience = valid_text(b["audience"], "audience")
        if "enabled" in b:
            p.enabled = valid_enabled(b["enabled"], p.enabled)
        if "verification" in b:
            p.verification = orjson.dumps(valid_verification(b["verification"])).decode()
        if "attribute_transformations" in b:
            p.attribute_transformations = orjson.dumps(valid_transformations(b["attribute_transformations"])).decode()
        p.updated_at = t
        await control.audit(
            s, actor, "workload_identity_provider.updated", {"id": p.id, "changes": sorted(b)}, resource_id=p.id, at=t
        )
        await control.bump_revision(s)
    jwks(request).forget(p.id)
    await changed(request)
    return JSONResponse(provider_json(p))


async def delete_provider(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    pid = request.path_params["provider_id"]
    async with runtime(request).write() as s:
        p = await find_provider(s, pid)
        if await has_rules(s, pid):
            raise conflict("Delete the provider's federation rules first.", code="provider_has_rules")
        await s.delete(p)
        await control.audit(s, actor, "workload_identity_provider.deleted", {"id": pid}, resource_id=pid)
        await control.bump_revision(s)
    await changed(request)
    return JSONResponse({"object": "organization.workload_identity_provider.deleted", "id": pid, "deleted": True})


R = f"{P}/{{provider_id}}/federation_rules"
ENDPOINTS: list[Endpoint] = [
    Endpoint(P, "GET", list_providers, "List workload identity providers"),
    Endpoint(P, "POST", create_provider, "Register an OIDC workload identity provider"),
    Endpoint(f"{P}/{{provider_id}}", "GET", get_provider, "Retrieve a workload identity provider"),
    Endpoint(f"{P}/{{provider_id}}", "POST", update_provider, "Update a workload identity provider"),
    Endpoint(f"{P}/{{provider_id}}", "DELETE", delete_provider, "Delete a workload identity provider"),
    Endpoint(R, "GET", list_rules, "List federation rules"),
    Endpoint(R, "POST", create_rule, "Create a federation rule"),
    Endpoint(f"{R}/{{rule_id}}", "GET", get_rule, "Retrieve a federation rule"),
    Endpoint(f"{R}/{{rule_id}}", "POST", update_rule, "Update a federation rule"),
    Endpoint(f"{R}/{{rule_id}}", "DELETE", delete_rule, "Delete a federation rule"),
]
