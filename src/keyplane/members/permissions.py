"""The ONE permission table of the admin API (docs/members-and-roles.md "Admin API keys and roles").

Every admin call needs one permission, derived from its method and path. Two predefined roles: ``owner``
(everything) and ``reader`` (every read); custom roles (keyplane.members.roles) hold any subset of the
table. A user's effective permissions are their organization role's plus every custom role assigned to
them directly or through a group. An admin key acts with its owner's effective permissions capped by the
key's own role (stored as its permissions: ``all`` = owner, ``read_only`` = reader): a key never holds
what its user lacks, and a reader key never writes. In a call on one project, the project-scoped roles the
user holds there (keyplane.members.project_roles) add their ``api.project.*`` permissions, under the same cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from keyplane.domain import Forbidden, Invalid
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

# What a project-scoped role (keyplane.members.project_roles) may hold: it acts inside its project only.
PROJECT_PERMISSIONS: Final = frozenset({PROJECT_READ, PROJECT_WRITE})

ROLES: Final[dict[str, frozenset[str]]] = {
    "owner": frozenset(PERMISSIONS),
    "reader": frozenset({ORG_READ, PROJECT_READ}),
}

# Calls that read though they POST (their body is a query, not a change).
_READ_POSTS: Final = ("/v1/organization/api_keys/lookup",)
# Project calls: keyplane's admin API, and the SDK's project-scoped role calls (``/v1/projects/...``).
PROJECT_PREFIXES: Final = ("/v1/organization/projects", "/v1/projects/")


def is_project_call(path: str) -> bool:
    return path.startswith(PROJECT_PREFIXES)


def required(method: str, path: str) -> str:
    """The permission an admin call needs."""
    write = method not in ("GET", "HEAD", "OPTIONS") and path not in _READ_POSTS
    if is_project_call(path):
        return PROJECT_WRITE if write else PROJECT_READ
    return ORG_WRITE if write else ORG_READ


def role_of_key(permissions: Permissions) -> str:
    """The role an admin key acts with: only an unrestricted key is an owner's."""
    return "owner" if permissions.mode == "all" else "reader"


def key_permissions_of_role(role: str) -> str:
    """How a role is stored on an admin key (its ``permissions`` column)."""
    return "all" if role == "owner" else "read_only"


def key_cap(permissions: Permissions) -> frozenset[str]:
    """The most an admin key may do: its own role's permissions."""
    return ROLES[role_of_key(permissions)]


def effective(org_role: str, custom: Iterable[Iterable[str]]) -> frozenset[str]:
    """A user's effective permissions: their organization role's, plus every custom role's they hold.
    Names outside the table (none can be stored) are dropped."""
    out = set(ROLES.get(org_role, frozenset()))
    for perms in custom:
        out.update(p for p in perms if p in PERMISSIONS)
    return frozenset(out)


def of_key(permissions: Permissions, owner_user_id: str | None, grants: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """What an admin key may do now: its owner's effective permissions (``grants``, user id -> set, from
    the snapshot) capped by the key's role. A key whose owner is gone holds nothing; a key created before
    keys had owners keeps its role's."""
    cap = key_cap(permissions)
    if owner_user_id is None:
        return cap
    return cap & grants.get(owner_user_id, frozenset())


def of_key_in_project(
    permissions: Permissions,
    owner_user_id: str | None,
    grants: Mapping[str, frozenset[str]],
    project_grants: Mapping[str, Mapping[str, frozenset[str]]],
    project_id: str | None,
) -> frozenset[str]:
    """What an admin key may do in a call on ``project_id`` (None: a call outside any one project): its
    owner's organization-wide permissions plus what the project-scoped roles they hold in that project grant
    (``api.project.*`` only; never in another project), capped by the key's role, as :func:`of_key`."""
    held = of_key(permissions, owner_user_id, grants)
    if project_id is None or owner_user_id is None or owner_user_id not in grants:  # no owner, or gone
        return held
    scoped = project_grants.get(owner_user_id, {}).get(project_id, frozenset())
    return held | (key_cap(permissions) & scoped & PROJECT_PERMISSIONS)


def check_granted(granted: frozenset[str], method: str, path: str) -> None:
    """403 in OpenAI's shape when ``granted`` lacks the call's permission."""
    need = required(method, path)
    if need not in granted:
        held = ", ".join(sorted(granted)) or "none"
        raise Forbidden(
            f"You have insufficient permissions for this operation. Missing scopes: {need}. This admin key "
            f"acts with: {held} (its user's roles, capped by the key's own role).",
            code="insufficient_permissions",
        )


def require_held(granted: frozenset[str], wanted: Iterable[str], what: str) -> None:
    """No privilege escalation: a caller may only create, widen or hand out (to a user, a group, a group's
    members) permissions it holds itself. 403 ``insufficient_permissions`` naming what is missing."""
    missing = sorted(set(wanted) - granted)
    if missing:
        raise Forbidden(
            f"You cannot {what}: it grants {', '.join(missing)}, which you do not hold yourself.",
            code="insufficient_permissions",
        )


def require_role_grant(granted: frozenset[str], role: object) -> None:
    """Making someone an organization ``owner`` (users.create/update, invites, users.roles) hands out every
    permission: only a caller holding them all may."""
    if isinstance(role, str) and role in ROLES:
        require_held(granted, ROLES[role], f"give the organization role '{role}'")


def check_names(
    value: object, param: str = "permissions", allowed: Iterable[str] = PERMISSIONS, what: str = "Permissions"
) -> list[str]:
    """Permission names from ``allowed`` (the table; 400 ``invalid_value`` for anything else), sorted, unique."""
    names = [p for p in PERMISSIONS if p in set(allowed)]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(
            f"'{param}' must be an array of permission names: {', '.join(names)}.", param=param, code="invalid_value"
        )
    unknown = sorted({v for v in value if v not in names})
    if unknown:
        raise Invalid(
            f"Unknown permission(s): {', '.join(unknown)}. {what} are: {', '.join(names)}.",
            param=param,
            code="invalid_value",
        )
    return sorted(set(value))


DESCRIPTIONS: Final[dict[str, str]] = {
    "owner": "Predefined: changes anything in the organization and its projects.",
    "reader": "Predefined: reads everything the admin API shows; changes nothing.",
}


def role_objects() -> list[dict[str, object]]:
    """The predefined roles in the SDK's ``Role`` shape (``roles.list()``)."""
    return [
        {
            "object": "role",
            "id": f"role-{name}",
            "name": name,
            "description": DESCRIPTIONS[name],
            "permissions": sorted(perms),
            "predefined_role": True,
            "resource_type": "api.organization",
        }
        for name, perms in ROLES.items()
    ]
