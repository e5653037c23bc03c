"""The identity admin API's resources on the wire: the JSON of a workload identity provider and of a
federation rule, and the checks of each field a request body sets (keyplane.identity.routes).
"""

from __future__ import annotations

from typing import Any

import orjson

from keyplane import control
from keyplane.errors import bad_request
from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow
from keyplane.identity.oidc import check_url

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


def valid_url(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"'{param}' must be a URL.", param=param, code="invalid_value")
    try:
        return check_url(value.strip())
    except ValueError as e:
        raise bad_request(str(e), param=param, code="invalid_value") from None


def valid_text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise bad_request(f"'{param}' must be a non-empty string.", param=param, code="invalid_value")
    return value.strip()


def valid_verification(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "discovery", "discovery_url": None}
    if isinstance(value, dict) and value.get("type") == "discovery":
        url = value.get("discovery_url")
        return {"type": "discovery", "discovery_url": None if url is None else valid_url(url, "verification")}
    if isinstance(value, dict) and value.get("type") == "uploaded_jwks":
        jwks = value.get("jwks")
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or len(orjson.dumps(jwks)) > 65536:
            raise bad_request("'verification.jwks' must be a JWKS object with 'keys'.", param="verification")
        return {"type": "uploaded_jwks", "jwks": jwks}
    raise bad_request("'verification.type' must be 'discovery' or 'uploaded_jwks'.", param="verification")


def valid_transformations(value: Any) -> list[dict[str, str]]:
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


def valid_matchers(value: Any) -> dict[str, Any]:
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


def valid_permissions(value: Any) -> tuple[dict[str, Any], str]:
    """(the shape stored and returned, the key permissions JSON)."""
    if value is None or (isinstance(value, dict) and value.get("type") == "service_account_default"):
        return {"type": "service_account_default"}, '"all"'
    if isinstance(value, dict) and value.get("type") == "restricted" and isinstance(value.get("scopes"), list):
        perms = control.check_permissions(value["scopes"])
        return {"type": "restricted", "scopes": list(value["scopes"])}, orjson.dumps(perms.to_json()).decode()
    raise bad_request(
        "'permissions' must be {type: service_account_default} or {type: restricted, scopes}.", param="permissions"
    )


def valid_enabled(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request("'enabled' must be a boolean.", param="enabled", code="invalid_type")
    return value
