"""Admin API of workload identity federation, in the SDK's shapes
(openai/resources/admin/organization/workload_identity_providers):

    GET/POST          /v1/organization/workload_identity_providers[/{id}]            (DELETE on {id})
    GET/POST          /v1/organization/workload_identity_providers/{id}/federation_rules[/{rule_id}]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from starlette.requests import Request

from keyplane import control, ids
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, require_in_project, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import bad_request, conflict, not_found
from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow
from keyplane.identity.oidc import JwksCache, check_url
from keyplane.lists import list_response
from keyplane.scopes import parse_permissions
from keyplane.store.models import ApiKey

if TYPE_CHECKING:
    from keyplane.identity.state import IdentityState
    from keyplane.snapshot import KeyEntry

P = "/v1/organization/workload_identity_providers"
MAX_MATCHERS = 32


def provider_json(p: WorkloadIdentityProviderRow) -> dict[str, Any]:
    return {
        "object": "organization.workload_identity_provider",
        "id": p.id,
        "type": "oidc",
        "name": p.name,
        "description": p.description,
        "issuer": p.issuer,
        "audience": p.audience,
        "enabled": p.enabled,
        "verification": orjson.loads(p.verification),
        "attribute_transformations": orjson.loads(p.attribute_transformations),
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def rule_json(r: FederationRuleRow) -> dict[str, Any]:
    return {
        "object": "organization.workload_identity_federation_rule",
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "enabled": r.enabled,
        "workload_identity_provider_id": r.provider_id,
        "project_id": r.project_id,
        "service_account_id": r.service_account_id,
        "attribute_matchers": orjson.loads(r.attribute_matchers),
        "permissions": orjson.loads(r.permissions),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


# --- validation --------------------------------------------------------------------------------


def _url(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"'{param}' must be a URL.", param=param, code="invalid_value")
    try:
        return check_url(value.strip())
    except ValueError as e:
        raise bad_request(str(e), param=param, code="invalid_value") from None


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise bad_request(f"'{param}' must be a non-empty string.", param=param, code="invalid_value")
    return value.strip()


def _verification(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "discovery", "discovery_url": None}
    if isinstance(value, dict) and value.get("type") == "discovery":
        url = value.get("discovery_url")
        return {"type": "discovery", "discovery_url": None if url is None else _url(url, "verification")}
    if isinstance(value, dict) and value.get("type") == "uploaded_jwks":
        jwks = value.get("jwks")
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or len(orjson.dumps(jwks)) > 65536:
            raise bad_request("'verification.jwks' must be a JWKS object with 'keys'.", param="verification")
        return {"type": "uploaded_jwks", "jwks": jwks}
    raise bad_request("'verification.type' must be 'discovery' or 'uploaded_jwks'.", param="verification")


def _transformations(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    ok = (
        isinstance(value, list)
        and len(value) <= MAX_MATCHERS
        and all(
            isinstance(t, dict)
            and isinstance(t.get("attribute"), str)
            and isinstance(t.get("expression"), str)
            and t["expression"].startswith("assertion.")
            for t in value
        )
    )
    if not ok:
        raise bad_request(
            "'attribute_transformations' must be a list of {attribute, expression: 'assertion.<claim>'}.",
            param="attribute_transformations",
        )
    return [{"attribute": t["attribute"], "expression": t["expression"]} for t in value]


def _matchers(value: Any) -> dict[str, Any]:
    ok = (
        isinstance(value, dict)
        and 0 < len(value) <= MAX_MATCHERS
        and all(isinstance(k, str) and isinstance(v, str | bool | int | float) for k, v in value.items())
    )
    if not ok:
        raise bad_request(
            "'attribute_matchers' must map at least one attribute to the value it must have: "
            "a rule that matches every token of an issuer is refused.",
            param="attribute_matchers",
        )
    return dict(value)


def _permissions(value: Any) -> tuple[dict[str, Any], str]:
    """(the shape stored and returned, the key permissions JSON)."""
    if value is None or (isinstance(value, dict) and value.get("type") == "service_account_default"):
        return {"type": "service_account_default"}, '"all"'
    if isinstance(value, dict) and value.get("type") == "restricted" and isinstance(value.get("scopes"), list):
        perms = control.check_permissions(value["scopes"])
        return {"type": "restricted", "scopes": list(value["scopes"])}, orjson.dumps(perms.to_json()).decode()
    raise bad_request(
        "'permissions' must be {type: service_account_default} or {type: restricted, scopes}.", param="permissions"
    )


# What widens who gets a rule's keys (a provider's: every rule of it), vs. names and descriptions.
_WIDENS_RULE = ("attribute_matchers", "permissions")
_WIDENS_PROVIDER = ("issuer", "audience", "verification", "attribute_transformations")


def _widens(b: dict[str, Any], fields: tuple[str, ...]) -> bool:
    return any(f in b for f in fields) or b.get("enabled") is True


def _require_keys_of(request: Request, entry: KeyEntry, project_id: str, sa_id: str) -> None:
    """A rule hands out keys of a project's service account: creating or widening one (or its provider) takes
    what creating such a key directly takes in that project (api.project.write there, organization-wide or from
    a project role), not only api.organization.write."""
    path = f"/v1/organization/projects/{project_id}/service_accounts/{sa_id}/api_keys"
    require_in_project(request, entry, project_id, "POST", path)


def _enabled(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request("'enabled' must be a boolean.", param="enabled", code="invalid_type")
    return value


# --- helpers -----------------------------------------------------------------------------------


async def _provider(s: Any, pid: str) -> WorkloadIdentityProviderRow:
    p = (await s.execute(select(WorkloadIdentityProviderRow).where(WorkloadIdentityProviderRow.id == pid))).scalar()
    if p is None:
        raise not_found(f"No workload identity provider found with id '{pid}'.")
    return p


async def _rule(s: Any, pid: str, rid: str) -> FederationRuleRow:
    r = (
        await s.execute(
            select(FederationRuleRow).where(FederationRuleRow.id == rid, FederationRuleRow.provider_id == pid)
        )
    ).scalar()
    if r is None:
        raise not_found(f"No federation rule found with id '{rid}' for provider '{pid}'.")
    return r


def _state(request: Request) -> IdentityState:
    state = runtime(request).features.identity
    if state is None:  # these endpoints are mounted by the identity feature's start
        raise RuntimeError("the identity feature is not running")
    return state


def _jwks(request: Request) -> JwksCache:
    jwks = runtime(request).features.identity_jwks
    if jwks is None:
        raise RuntimeError("the identity feature is not running")
    return jwks


async def _changed(request: Request) -> None:
    """This instance's identity state now; the others follow the snapshot's change (keyplane.identity.state).
    The change is committed: should the reload fail, the state's own reload retries until it loads."""
    state = _state(request)
    try:
        await state.load()
    except Exception:
        state.schedule()


def _now(request: Request) -> int:
    return int(runtime(request).clock.now())


# --- providers ---------------------------------------------------------------------------------


async def list_providers(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    desc = request.query_params.get("order", "desc") != "asc"
    async with runtime(request).read() as s:
        rows, more = await control.page(
            s,
            WorkloadIdentityProviderRow,
            select(WorkloadIdentityProviderRow),
            after=request.query_params.get("after"),
            limit=limit,
            descending=desc,
        )
    return JSONResponse(list_response([provider_json(p) for p in rows], more))


async def create_provider(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    b = await json_body(request)
    if b.get("type") != "oidc":
        raise bad_request("'type' must be 'oidc'.", param="type", code="invalid_value")
    t = _now(request)
    p = WorkloadIdentityProviderRow(
        id=ids.new_id("wip_"),
        name=control.check_name(b.get("name")),
        description=b.get("description"),
        issuer=_url(b.get("issuer"), "issuer"),
        audience=_text(b.get("audience"), "audience"),
        enabled=_enabled(b.get("enabled"), True),
        verification=orjson.dumps(_verification(b.get("verification"))).decode(),
        attribute_transformations=orjson.dumps(_transformations(b.get("attribute_transformations"))).decode(),
        created_at=t,
        updated_at=t,
    )
    async with runtime(request).write() as s:
        s.add(p)
        await control.audit(
            s, actor, "workload_identity_provider.created", {"id": p.id, "issuer": p.issuer}, resource_id=p.id, at=t
        )
        await control.bump_revision(s)
    await _changed(request)
    return JSONResponse(provider_json(p))


async def get_provider(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        p = await _provider(s, request.path_params["provider_id"])
    return JSONResponse(provider_json(p))


async def update_provider(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    b = await json_body(request)
    t = _now(request)
    async with runtime(request).write() as s:
        p = await _provider(s, request.path_params["provider_id"])
        if _widens(b, _WIDENS_PROVIDER):  # another issuer or audience: other tokens match every rule of it
            rules = await s.execute(
                select(FederationRuleRow.project_id, FederationRuleRow.service_account_id).where(
                    FederationRuleRow.provider_id == p.id
                )
            )
            for project_id, sa_id in sorted({(r.project_id, r.service_account_id) for r in rules.all()}):
                _require_keys_of(request, entry, project_id, sa_id)
        if "name" in b:
            p.name = control.check_name(b["name"]) or p.name
        if "description" in b:
            p.description = b["description"] if isinstance(b["description"], str) else None
        if "issuer" in b:
            p.issuer = _url(b["issuer"], "issuer")
        if "audience" in b:
            p.audience = _text(b["audience"], "audience")
        if "enabled" in b:
            p.enabled = _enabled(b["enabled"], p.enabled)
        if "verification" in b:
            p.verification = orjson.dumps(_verification(b["verification"])).decode()
        if "attribute_transformations" in b:
            p.attribute_transformations = orjson.dumps(_transformations(b["attribute_transformations"])).decode()
        p.updated_at = t
        await control.audit(
            s, actor, "workload_identity_provider.updated", {"id": p.id, "changes": sorted(b)}, resource_id=p.id, at=t
        )
        await control.bump_revision(s)
    _jwks(request).forget(p.id)
    await _changed(request)
    return JSONResponse(provider_json(p))


async def delete_provider(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    pid = request.path_params["provider_id"]
    async with runtime(request).write() as s:
        p = await _provider(s, pid)
        if (await s.execute(select(FederationRuleRow.id).where(FederationRuleRow.provider_id == pid))).first():
            raise conflict("Delete the provider's federation rules first.", code="provider_has_rules")
        await s.delete(p)
        await control.audit(s, actor, "workload_identity_provider.deleted", {"id": pid}, resource_id=pid)
        await control.bump_revision(s)
    await _changed(request)
    return JSONResponse({"object": "organization.workload_identity_provider.deleted", "id": pid, "deleted": True})


# --- federation rules --------------------------------------------------------------------------


async def list_rules(request: Request) -> JSONResponse:
    authenticate_admin(request)
    pid = request.path_params["provider_id"]
    q = request.query_params
    stmt = select(FederationRuleRow).where(FederationRuleRow.provider_id == pid)
    if q.get("service_account_id"):
        stmt = stmt.where(FederationRuleRow.service_account_id == q["service_account_id"])
    async with runtime(request).read() as s:
        await _provider(s, pid)
        rows, more = await control.page(
            s,
            FederationRuleRow,
            stmt,
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
        _text(b.get("project_id"), "project_id"),
        _text(b.get("service_account_id"), "service_account_id"),
    )
    _require_keys_of(request, entry, project_id, sa_id)
    matchers = _matchers(b.get("attribute_matchers"))
    shown, key_perms = _permissions(b.get("permissions"))
    name = control.check_name(b.get("name"), required=False)
    t = _now(request)
    async with rt.write() as s:
        await _provider(s, pid)
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
            enabled=_enabled(b.get("enabled"), True),
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
    await _changed(request)
    return JSONResponse(rule_json(r))


async def get_rule(request: Request) -> JSONResponse:
    authenticate_admin(request)
    async with runtime(request).read() as s:
        r = await _rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
    return JSONResponse(rule_json(r))


async def update_rule(request: Request) -> JSONResponse:
    entry, actor = authenticate_admin(request)
    b = await json_body(request)
    t = _now(request)
    async with runtime(request).write() as s:
        r = await _rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
        if _widens(b, _WIDENS_RULE):
            _require_keys_of(request, entry, r.project_id, r.service_account_id)
        if "attribute_matchers" in b:
            r.attribute_matchers = orjson.dumps(_matchers(b["attribute_matchers"])).decode()
        if "enabled" in b:
            r.enabled = _enabled(b["enabled"], r.enabled)
        if "name" in b:
            r.name = control.check_name(b["name"], required=False)
        if "description" in b:
            r.description = b["description"] if isinstance(b["description"], str) else None
        if "permissions" in b:
            shown, key_perms = _permissions(b["permissions"])
            r.permissions = orjson.dumps(shown).decode()
            key = (await s.execute(select(ApiKey).where(ApiKey.id == r.key_id))).scalar()
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
    await _changed(request)
    return JSONResponse(rule_json(r))


async def delete_rule(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    t = _now(request)
    async with runtime(request).write() as s:
        r = await _rule(s, request.path_params["provider_id"], request.path_params["rule_id"])
        key = (await s.execute(select(ApiKey).where(ApiKey.id == r.key_id))).scalar()
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
    await _changed(request)
    return JSONResponse(
        {"object": "organization.workload_identity_federation_rule.deleted", "id": r.id, "deleted": True}
    )


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
