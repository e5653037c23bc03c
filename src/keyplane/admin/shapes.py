"""API objects in the OpenAI Admin API shapes (openai/types/admin/organization)."""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.store.models import ApiKey, AuditLog, Project, ProviderObject, ServiceAccount, User


def project(p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "object": "organization.project",
        "name": p.name,
        "created_at": p.created_at,
        "archived_at": p.archived_at,
        "status": p.status,
    }


def user(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "object": "organization.user",
        "name": u.name,
        "email": u.email,
        "role": u.role,
        "added_at": u.added_at,
    }


def key_status(k: ApiKey, now: float) -> str:
    if k.revoked_at is not None:
        return "revoked"
    if k.suspended_at is not None:
        return "suspended"
    if k.expires_at is not None and now >= k.expires_at:
        return "expired"
    return "active"


def _keyplane_ext(k: ApiKey, now: float) -> dict[str, Any]:
    """keyplane's extension fields on a key object (documented in docs/admin-api.md)."""
    return {
        "permissions": orjson.loads(k.permissions),
        "status": key_status(k, now),
        "revoked_at": k.revoked_at,
        "revoke_reason": k.revoke_reason,
        "suspended_at": k.suspended_at,
        "project_id": k.project_id,
    }


def project_key(k: ApiKey, owner_user: User | None, sa: ServiceAccount | None, now: float) -> dict[str, Any]:
    owner: dict[str, Any]
    if sa is not None or k.kind == "svc":
        owner = {
            "type": "service_account",
            "service_account": {
                "id": sa.id if sa else k.service_account_id,
                "name": sa.name if sa else k.name,
                "created_at": sa.created_at if sa else k.created_at,
                "role": sa.role if sa else "member",
            },
        }
    else:
        owner = {
            "type": "user",
            "user": {
                "id": owner_user.id if owner_user else k.owner_user_id,
                "name": owner_user.name if owner_user else "(removed user)",
                "email": owner_user.email if owner_user else "",
                "created_at": owner_user.added_at if owner_user else 0,
                "role": "owner" if owner_user and owner_user.role == "owner" else "member",
            },
        }
    d = {
        "object": "organization.project.api_key",
        "id": k.id,
        "name": k.name,
        "redacted_value": k.redacted_value,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "expires_at": k.expires_at,
        "owner": owner,
        "owner_project_access": "active" if key_status(k, now) == "active" else "inactive",
    }
    d.update(_keyplane_ext(k, now))
    return d


def admin_key(k: ApiKey, owner_user: User | None, now: float) -> dict[str, Any]:
    d = {
        "object": "organization.admin_api_key",
        "id": k.id,
        "name": k.name,
        "redacted_value": k.redacted_value,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "expires_at": k.expires_at,
        "owner": {
            "type": "user",
            "object": "organization.user",
            "id": k.owner_user_id,
            "name": owner_user.name if owner_user else None,
            "created_at": owner_user.added_at if owner_user else None,
            "role": "owner",
        },
    }
    d.update(_keyplane_ext(k, now))
    return d


def service_account(sa: ServiceAccount) -> dict[str, Any]:
    return {
        "object": "organization.project.service_account",
        "id": sa.id,
        "name": sa.name,
        "role": sa.role,
        "created_at": sa.created_at,
    }


def service_account_created(sa: ServiceAccount, k: ApiKey, value: str) -> dict[str, Any]:
    d = service_account(sa)
    d["api_key"] = {
        "object": "organization.project.service_account.api_key",
        "value": value,
        "name": k.name,
        "created_at": k.created_at,
        "id": k.id,
        "expires_at": k.expires_at,
    }
    return d


def audit_log(a: AuditLog, project_name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": a.id,
        "object": "organization.audit_log",
        "type": a.type,
        "effective_at": a.effective_at,
        "actor": orjson.loads(a.actor),
        "project": {"id": a.project_id, "name": project_name} if a.project_id else None,
    }
    d[a.type] = orjson.loads(a.details)
    return d


def deleted(obj: str, id: str) -> dict[str, Any]:
    return {"object": f"{obj}.deleted", "id": id, "deleted": True}


def provider_object(o: ProviderObject, provider_id: str | None = None) -> dict[str, Any]:
    """keyplane extension: a provider object's owner (POST /v1/organization/provider_objects). ``provider_id``:
    the provider's id, when the row holds its digest (an id longer than 128 characters)."""
    return {
        "id": provider_id or o.id,
        "object": "organization.provider_object",
        "kind": o.object,
        "project_id": o.project_id,
        "upstream": o.upstream or None,
        "created_at": o.created_at,
    }
