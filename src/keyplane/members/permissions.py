"""The ONE permission table of the admin API (docs/members-and-roles.md "Admin API keys and roles").

Every admin call needs one permission, derived from its method and path; an admin key holds the
permissions of its role. Two predefined roles: ``owner`` (everything) and ``reader`` (every read).
An admin key's role is stored as its permissions: ``all`` = owner, ``read_only`` = reader.
"""

from __future__ import annotations

from typing import Final

from keyplane import errors
from keyplane.scopes import Permissions

ORG_READ: Final = "api.organization.read"
ORG_WRITE: Final = "api.organization.write"
PROJECT_READ: Final = "api.project.read"
PROJECT_WRITE: Final = "api.project.write"

PERMISSIONS: Final[dict[str, str]] = {
    ORG_READ: "Read organization-level objects: users, invites, admin keys, audit logs, usage and costs.",
    ORG_WRITE: "Change organization-level objects: users, invites, admin keys, organization limits.",
    PROJECT_READ: "Read projects and what they hold: keys, service accounts, members, limits.",
    PROJECT_WRITE: "Create and change projects and what they hold.",
}

ROLES: Final[dict[str, frozenset[str]]] = {
    "owner": frozenset(PERMISSIONS),
    "reader": frozenset({ORG_READ, PROJECT_READ}),
}

# Calls that read though they POST (their body is a query, not a change).
_READ_POSTS: Final = ("/v1/organization/api_keys/lookup",)


def required(method: str, path: str) -> str:
    """The permission an admin call needs."""
    write = method not in ("GET", "HEAD", "OPTIONS") and path not in _READ_POSTS
    project = path.startswith("/v1/organization/projects")
    if project:
        return PROJECT_WRITE if write else PROJECT_READ
    return ORG_WRITE if write else ORG_READ


def role_of_key(permissions: Permissions) -> str:
    """The role an admin key acts with: only an unrestricted key is an owner's."""
    return "owner" if permissions.mode == "all" else "reader"


def key_permissions_of_role(role: str) -> str:
    """How a role is stored on an admin key (its ``permissions`` column)."""
    return "all" if role == "owner" else "read_only"


def check(permissions: Permissions, method: str, path: str) -> None:
    """403 in OpenAI's shape when the key's role lacks the call's permission."""
    need = required(method, path)
    role = role_of_key(permissions)
    if need not in ROLES[role]:
        raise errors.forbidden(
            f"You have insufficient permissions for this operation. Missing scopes: {need}. This admin key has "
            f"the '{role}' role, which may only read; an owner's admin key is needed to make changes.",
            code="insufficient_permissions")


DESCRIPTIONS: Final[dict[str, str]] = {
    "owner": "Predefined: changes anything in the organization and its projects.",
    "reader": "Predefined: reads everything the admin API shows; changes nothing.",
}


def role_objects() -> list[dict[str, object]]:
    """The predefined roles in the SDK's ``Role`` shape (``roles.list()``)."""
    return [{"object": "role", "id": f"role-{name}", "name": name, "description": DESCRIPTIONS[name],
             "permissions": sorted(perms), "predefined_role": True, "resource_type": "api.organization"}
            for name, perms in ROLES.items()]
