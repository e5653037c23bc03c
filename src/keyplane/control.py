"""Control-plane operations shared by the admin API and the CLI.

Each change runs in one transaction that also writes its audit entry and bumps the revision
counter the snapshots poll (DESIGN.md: "Every change writes an audit event").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import ids, keys
from keyplane.errors import APIError, bad_request, conflict, not_found
from keyplane.scopes import InvalidPermissions, Permissions, parse_permissions
from keyplane.store.models import ApiKey, AuditLog, Meta, Organization, Project, ServiceAccount, User

MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, in the audit log's actor shape."""

    type: str  # api_key | session | cli | system
    id: str | None = None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.detail is not None:
            d[self.type] = self.detail
        return d


CLI_ACTOR = Actor("cli", None, {"via": "keyplane command line"})
SYSTEM_ACTOR = Actor("system", None, {"via": "keyplane"})


def now_s(clock_now: float | None = None) -> int:
    import time

    return int(clock_now if clock_now is not None else time.time())


# --- validation helpers ------------------------------------------------------------------------

def check_name(value: Any, param: str = "name", required: bool = True) -> str | None:
    if value is None:
        if required:
            raise bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise bad_request(f"Invalid type for '{param}': expected a string.", param=param, code="invalid_type")
    value = value.strip()
    if not value:
        raise bad_request(f"'{param}' must not be empty.", param=param, code="invalid_value")
    if len(value) > MAX_NAME:
        raise bad_request(f"'{param}' is too long: at most {MAX_NAME} characters.", param=param,
                          code="string_above_max_length")
    return value


def check_permissions(value: Any) -> Permissions:
    try:
        return parse_permissions(value)
    except InvalidPermissions as e:
        raise bad_request(str(e), param="permissions", code="invalid_value") from None


def check_positive_int(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_request(f"'{param}' must be a positive integer.", param=param, code="invalid_value")
    return value


# --- revision and audit ------------------------------------------------------------------------

async def bump_revision(s: AsyncSession) -> None:
    res = await s.execute(update(Meta).where(Meta.name == "revision").values(value=Meta.value + 1)
                          .returning(Meta.value))
    value = res.scalar()
    if value is None:
        s.add(Meta(name="revision", value=1))
        value = 1
    s.info.setdefault("keyplane.revisions", []).append(value)  # published after commit (keyplane.bus)


async def audit(
    s: AsyncSession, actor: Actor, type: str, details: dict[str, Any], *,
    project_id: str | None = None, resource_id: str | None = None, at: int | None = None,
) -> None:
    s.add(AuditLog(
        id=ids.audit_id(), type=type, effective_at=at if at is not None else now_s(),
        project_id=project_id, actor_id=actor.id, actor=orjson.dumps(actor.to_dict()).decode(),
        resource_id=resource_id, details=orjson.dumps(details).decode(),
    ))


# --- pagination --------------------------------------------------------------------------------

async def page(
    s: AsyncSession, model: Any, stmt: Select[Any], *, after: str | None, before: str | None = None,
    limit: int, descending: bool = False,
) -> tuple[list[Any], bool]:
    """Cursor paging on ``seq``: returns (rows, has_more)."""
    for cursor, is_after in ((after, True), (before, False)):
        if not cursor:
            continue
        seq = (await s.execute(select(model.seq).where(model.id == cursor))).scalar()
        if seq is None:
            raise bad_request(f"No object with id '{cursor}' to page from.", param="after" if is_after else "before")
        forward = is_after != descending
        stmt = stmt.where(model.seq > seq if forward else model.seq < seq)
    stmt = stmt.order_by(model.seq.desc() if descending else model.seq.asc()).limit(limit + 1)
    rows = list((await s.execute(stmt)).scalars())
    return rows[:limit], len(rows) > limit


# --- organization ------------------------------------------------------------------------------

async def get_org(s: AsyncSession) -> Organization | None:
    return (await s.execute(select(Organization))).scalar()


class AlreadyInitialized(Exception):
    pass


async def init_org(
    s: AsyncSession, secret: bytes, org_name: str, owner_email: str, *, owner_name: str = "",
    at: int | None = None,
) -> dict[str, Any]:
    """Create the organization, its owner, "Default project", a service-account key and an admin key."""
    if await get_org(s) is not None:
        raise AlreadyInitialized()
    t = at if at is not None else now_s()
    org = Organization(id=ids.org_id(), name=org_name, created_at=t)
    s.add(org)
    s.add(Meta(name="revision", value=0))
    owner = await add_user(s, CLI_ACTOR, email=owner_email, role="owner", name=owner_name, at=t)
    project = await create_project(s, CLI_ACTOR, "Default project", at=t)
    sa, sa_key = await create_service_account(s, CLI_ACTOR, project, "default", at=t, secret=secret)
    admin_row, admin_value = await create_admin_key(s, CLI_ACTOR, secret, "init admin key",
                                                   owner_user_id=owner.id, at=t)
    return {
        "organization_id": org.id, "owner_user_id": owner.id, "project_id": project.id,
        "service_account_id": sa.id, "api_key": sa_key, "api_key_id": sa.api_key_id,  # type: ignore[attr-defined]
        "admin_key": admin_value, "admin_key_id": admin_row.id,
    }


# --- users -------------------------------------------------------------------------------------

ROLES = ("owner", "reader")


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise bad_request("'role' must be 'owner' or 'reader'.", param="role", code="invalid_value")
    return role  # type: ignore[no-any-return]


async def add_user(
    s: AsyncSession, actor: Actor, *, email: object, role: str, name: str = "", password_hash: str | None = None,
    at: int | None = None,
) -> User:
    email = (check_name(email, "email") or "").lower()
    if "@" not in email:
        raise bad_request("'email' must be an email address.", param="email", code="invalid_value")
    check_role(role)
    if (await s.execute(select(User.id).where(User.email == email))).scalar():
        raise conflict(f"A user with email {email} already exists.", code="user_exists")
    t = at if at is not None else now_s()
    user = User(id=ids.user_id(), email=email, name=name or email.split("@")[0], role=role,
                password_hash=password_hash, added_at=t)
    s.add(user)
    await audit(s, actor, "user.added", {"id": user.id, "data": {"role": role}}, resource_id=user.id, at=t)
    await bump_revision(s)
    return user


async def get_user(s: AsyncSession, user_id: str) -> User:
    user = (await s.execute(select(User).where(User.id == user_id))).scalar()
    if user is None:
        raise not_found(f"No user found with id '{user_id}'.", param="user_id")
    return user


async def find_user(s: AsyncSession, id_or_email: str) -> User:
    user = (await s.execute(
        select(User).where((User.id == id_or_email) | (User.email == id_or_email.lower()))
    )).scalar()
    if user is None:
        raise not_found(f"No user found with id or email '{id_or_email}'.", param="user_id")
    return user


async def update_user_role(s: AsyncSession, actor: Actor, user_id: str, role: Any) -> User:
    user = await get_user(s, user_id)
    role = check_role(role)
    if user.role == "owner" and role != "owner":
        await _keep_one_owner(s, user.id)
        t = now_s()  # their admin keys act with their role from now on: read only
        await s.execute(update(ApiKey).where(ApiKey.kind == "admin", ApiKey.owner_user_id == user.id,
                                             ApiKey.revoked_at.is_(None))
                        .values(permissions='"read_only"', updated_at=t))
        from keyplane.members.ops import revoke_unreachable_keys  # and their keys outside their projects go

        await revoke_unreachable_keys(s, user.id, t)
    user.role = role
    await audit(s, actor, "user.updated", {"id": user.id, "changes_requested": {"role": role}},
                resource_id=user.id)
    await bump_revision(s)
    return user


async def _keep_one_owner(s: AsyncSession, leaving: str) -> None:
    owners = (await s.execute(select(func.count()).select_from(User).where(User.role == "owner",
                                                                            User.id != leaving))).scalar()
    if not owners:
        raise bad_request("The organization must keep at least one owner.", code="last_owner")


async def delete_user(s: AsyncSession, actor: Actor, user_id: str) -> None:
    """Remove a user. Their own keys are revoked; service accounts and their keys live on."""
    user = await get_user(s, user_id)
    if user.role == "owner":
        await _keep_one_owner(s, user.id)
    t = now_s()
    await s.execute(update(ApiKey).where(ApiKey.owner_user_id == user.id, ApiKey.service_account_id.is_(None),
                                         ApiKey.revoked_at.is_(None))
                    .values(revoked_at=t, revoke_reason="owner removed from the organization", updated_at=t))
    from keyplane.members.ops import forget_user  # and their project memberships

    await forget_user(s, user.id)
    await s.delete(user)
    await audit(s, actor, "user.deleted", {"id": user.id}, resource_id=user.id, at=t)
    await bump_revision(s)


# --- projects ----------------------------------------------------------------------------------

async def create_project(s: AsyncSession, actor: Actor, name: Any, at: int | None = None) -> Project:
    name = check_name(name)
    t = at if at is not None else now_s()
    p = Project(id=ids.project_id(), name=name, status="active", created_at=t)
    s.add(p)
    await audit(s, actor, "project.created", {"id": p.id, "data": {"name": name, "title": name}},
                project_id=p.id, resource_id=p.id, at=t)
    await bump_revision(s)
    return p


async def get_project(s: AsyncSession, project_id: str) -> Project:
    p = (await s.execute(select(Project).where(Project.id == project_id))).scalar()
    if p is None:
        raise not_found(f"No project found with id '{project_id}'.", param="project_id")
    return p


async def find_project(s: AsyncSession, id_or_name: str) -> Project:
    """By id, or by name when the name is unique (for the CLI)."""
    p = (await s.execute(select(Project).where(Project.id == id_or_name))).scalar()
    if p is not None:
        return p
    rows = list((await s.execute(select(Project).where(Project.name == id_or_name))).scalars())
    if len(rows) == 1:
        return rows[0]
    if len(rows) > 1:
        raise bad_request(f"Several projects are named '{id_or_name}'; use the project id.", param="project")
    raise not_found(f"No project found with id or name '{id_or_name}'.", param="project_id")


def ensure_active(p: Project) -> None:
    if p.status != "active":
        raise bad_request(f"Project '{p.id}' is archived; archived projects cannot be changed.",
                          param="project_id", code="project_archived")


async def update_project(s: AsyncSession, actor: Actor, project_id: str, name: Any) -> Project:
    p = await get_project(s, project_id)
    ensure_active(p)
    name = check_name(name)
    p.name = name
    await audit(s, actor, "project.updated", {"id": p.id, "changes_requested": {"title": name, "name": name}},
                project_id=p.id, resource_id=p.id)
    await bump_revision(s)
    return p


async def archive_project(s: AsyncSession, actor: Actor, project_id: str) -> Project:
    p = await get_project(s, project_id)
    if p.status == "archived":
        return p
    t = now_s()
    p.status, p.archived_at = "archived", t
    from keyplane.members.project_roles import forget_project  # nobody holds its project roles any more

    await forget_project(s, p.id)
    await audit(s, actor, "project.archived", {"id": p.id}, project_id=p.id, resource_id=p.id, at=t)
    await bump_revision(s)
    return p


# --- keys --------------------------------------------------------------------------------------

def _new_key_row(
    secret: bytes, kind: keys.KeyKind, name: str, *, project_id: str | None, owner_user_id: str | None,
    service_account_id: str | None, permissions: Permissions, expires_at: int | None, at: int,
) -> tuple[ApiKey, str]:
    value = keys.generate(kind)
    row = ApiKey(
        id=ids.key_id(), kind=kind, name=name, digest=keys.digest(secret, value),
        redacted_value=keys.redact(value), project_id=project_id, owner_user_id=owner_user_id,
        service_account_id=service_account_id, permissions=orjson.dumps(permissions.to_json()).decode(),
        created_at=at, expires_at=expires_at, updated_at=at,
    )
    return row, value


async def create_project_key(
    s: AsyncSession, actor: Actor, secret: bytes, project_id: str, *, name: Any, owner_user_id: str | None,
    permissions: Any = None, expires_in_seconds: Any = None, at: int | None = None,
) -> tuple[ApiKey, str]:
    """A user key in a project (keyplane extension: the platform has no such endpoint)."""
    p = await get_project(s, project_id)
    ensure_active(p)
    name = check_name(name)
    perms = check_permissions(permissions)
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    if owner_user_id is not None:
        from keyplane.members.ops import require_member_for_key  # a user key only where its user is a member

        await require_member_for_key(s, p.id, owner_user_id)
    else:
        owner = (await s.execute(select(User).where(User.role == "owner").order_by(User.seq))).scalar()
        owner_user_id = owner.id if owner else None
    t = at if at is not None else now_s()
    row, value = _new_key_row(secret, "proj", name or "", project_id=p.id, owner_user_id=owner_user_id,
                              service_account_id=None, permissions=perms,
                              expires_at=t + ttl if ttl else None, at=t)
    s.add(row)
    await audit(s, actor, "api_key.created", {"id": row.id, "data": {"scopes": sorted(perms.scopes)}},
                project_id=p.id, resource_id=row.id, at=t)
    await bump_revision(s)
    return row, value


async def get_key(s: AsyncSession, key_id: str, project_id: str | None = None, kind: str | None = None) -> ApiKey:
    stmt = select(ApiKey).where(ApiKey.id == key_id)
    if project_id is not None:
        stmt = stmt.where(ApiKey.project_id == project_id)
    if kind == "admin":
        stmt = stmt.where(ApiKey.kind == "admin")
    elif kind == "project":
        stmt = stmt.where(ApiKey.kind != "admin")
    row = (await s.execute(stmt)).scalar()
    if row is None:
        raise not_found(f"No API key found with id '{key_id}'.", param="key_id")
    return row


async def update_key(
    s: AsyncSession, actor: Actor, key_id: str, *, project_id: str | None = None, name: Any = None,
    permissions: Any = None, expires_in_seconds: Any = None,
) -> ApiKey:
    row = await get_key(s, key_id, project_id, kind="project")
    if row.project_id:
        ensure_active(await get_project(s, row.project_id))
    changes: dict[str, Any] = {}
    if name is not None:
        row.name = check_name(name) or row.name
        changes["name"] = row.name
    if permissions is not None:
        perms = check_permissions(permissions)
        row.permissions = orjson.dumps(perms.to_json()).decode()
        changes["scopes"] = sorted(perms.scopes)
    t = now_s()
    if expires_in_seconds is not None:
        if row.expires_at is not None and t >= row.expires_at:
            raise bad_request("The key has expired; expired keys cannot be updated.", code="key_expired")
        row.expires_at = t + (check_positive_int(expires_in_seconds, "expires_in_seconds") or 0)
        changes["expires_at"] = row.expires_at
    if not changes:
        raise bad_request("Nothing to update: give 'name', 'scopes' (or 'permissions') and/or 'expires_in_seconds'.",
                          code="missing_required_parameter")
    row.updated_at = t
    await audit(s, actor, "api_key.updated", {"id": row.id, "changes_requested": changes},
                project_id=row.project_id, resource_id=row.id)
    await bump_revision(s)
    return row


async def revoke_key(
    s: AsyncSession, actor: Actor, row: ApiKey, reason: str, event: str = "api_key.deleted",
) -> ApiKey:
    t = now_s()
    if row.revoked_at is None:
        row.revoked_at, row.revoke_reason, row.updated_at = t, reason, t
        await audit(s, actor, event, {"id": row.id, "reason": reason}, project_id=row.project_id,
                    resource_id=row.id, at=t)
        await bump_revision(s)
    return row


async def set_suspended(s: AsyncSession, actor: Actor, row: ApiKey, reason: str | None) -> ApiKey:
    """Suspend (reason given) or resume (None) a key: reversible, unlike revoke."""
    t = now_s()
    if reason is not None:
        if row.revoked_at is not None:
            raise bad_request("The key is revoked; a revoked key cannot be suspended or resumed.")
        row.suspended_at, row.suspend_reason = t, reason
        event = "api_key.suspended"
    else:
        if row.revoked_at is not None:
            raise bad_request("The key is revoked; a revoked key cannot be resumed. Create a new key.")
        row.suspended_at, row.suspend_reason = None, None
        event = "api_key.resumed"
    row.updated_at = t
    await audit(s, actor, event, {"id": row.id, "reason": reason}, project_id=row.project_id, resource_id=row.id,
                at=t)
    await bump_revision(s)
    return row


async def rotate_key(
    s: AsyncSession, actor: Actor, secret: bytes, key_id: str, *, project_id: str | None = None,
    grace_seconds: Any = None,
) -> tuple[ApiKey, str, ApiKey]:
    """A new value for a key: same name, owner, permissions; the old one stops now or after a grace."""
    old = await get_key(s, key_id, project_id, kind="project")
    if old.revoked_at is not None:
        raise bad_request("The key is revoked; create a new key instead of rotating it.", code="key_revoked")
    if old.project_id:
        ensure_active(await get_project(s, old.project_id))
    grace = 0
    if grace_seconds is not None:
        ok = isinstance(grace_seconds, int) and not isinstance(grace_seconds, bool)
        if not ok or not 0 <= grace_seconds <= 30 * 86400:
            raise bad_request("'grace_period_seconds' must be an integer from 0 to 2592000 (30 days).",
                              param="grace_period_seconds", code="invalid_value")
        grace = grace_seconds
    t = now_s()
    new, value = _new_key_row(
        secret, old.kind, old.name, project_id=old.project_id, owner_user_id=old.owner_user_id,  # type: ignore[arg-type]
        service_account_id=old.service_account_id,
        permissions=parse_permissions(orjson.loads(old.permissions)), expires_at=old.expires_at, at=t,
    )
    s.add(new)
    from keyplane.access.models import copy_key_policies  # the key's own access policies go with it

    await copy_key_policies(s, old.id, new.id, t)
    old.rotated_to = new.id
    old.updated_at = t
    if grace:
        old.expires_at = min(old.expires_at or t + grace, t + grace)
    else:
        old.revoked_at, old.revoke_reason = t, f"rotated to {new.id}"
    await audit(s, actor, "api_key.created", {"id": new.id, "data": {"rotated_from": old.id}},
                project_id=new.project_id, resource_id=new.id, at=t)
    await audit(s, actor, "api_key.updated", {"id": old.id, "changes_requested": {
        "rotated_to": new.id, "expires_at": old.expires_at, "revoked": old.revoked_at is not None}},
        project_id=old.project_id, resource_id=old.id, at=t)
    await bump_revision(s)
    return new, value, old


# --- service accounts --------------------------------------------------------------------------

async def create_service_account(
    s: AsyncSession, actor: Actor, project: Project, name: Any, *, secret: bytes,
    expires_in_seconds: Any = None, at: int | None = None,
) -> tuple[ServiceAccount, str]:
    ensure_active(project)
    name = check_name(name)
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    t = at if at is not None else now_s()
    sa = ServiceAccount(id=ids.service_account_id(), project_id=project.id, name=name, role="member", created_at=t)
    s.add(sa)
    row, value = _new_key_row(secret, "svc", name or "", project_id=project.id, owner_user_id=None,
                              service_account_id=sa.id, permissions=parse_permissions("all"),
                              expires_at=t + ttl if ttl else None, at=t)
    s.add(row)
    sa.api_key_id = row.id  # type: ignore[attr-defined]
    sa.api_key_row = row  # type: ignore[attr-defined]
    await audit(s, actor, "service_account.created", {"id": sa.id, "data": {"role": "member"}},
                project_id=project.id, resource_id=sa.id, at=t)
    await audit(s, actor, "api_key.created", {"id": row.id, "data": {"scopes": ["all"]}},
                project_id=project.id, resource_id=row.id, at=t)
    await bump_revision(s)
    return sa, value


async def get_service_account(s: AsyncSession, project_id: str, sa_id: str) -> ServiceAccount:
    sa = (await s.execute(select(ServiceAccount).where(
        ServiceAccount.id == sa_id, ServiceAccount.project_id == project_id,
        ServiceAccount.deleted_at.is_(None)))).scalar()
    if sa is None:
        raise not_found(f"No service account found with id '{sa_id}' in project '{project_id}'.",
                        param="service_account_id")
    return sa


async def delete_service_account(s: AsyncSession, actor: Actor, project_id: str, sa_id: str) -> None:
    sa = await get_service_account(s, project_id, sa_id)
    t = now_s()
    sa.deleted_at = t
    await s.execute(update(ApiKey).where(ApiKey.service_account_id == sa.id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=t, revoke_reason="service account deleted", updated_at=t))
    await audit(s, actor, "service_account.deleted", {"id": sa.id}, project_id=project_id, resource_id=sa.id, at=t)
    await bump_revision(s)


# --- admin keys --------------------------------------------------------------------------------

async def create_admin_key(
    s: AsyncSession, actor: Actor, secret: bytes, name: Any, *, owner_user_id: str | None = None,
    expires_in_seconds: Any = None, at: int | None = None, role: Any = None,
) -> tuple[ApiKey, str]:
    name = check_name(name)
    if role not in (None, "owner", "reader"):  # the admin key's role (keyplane.members.permissions)
        raise bad_request("'role' must be 'owner' or 'reader'.", param="role", code="invalid_value")
    ttl = check_positive_int(expires_in_seconds, "expires_in_seconds")
    t = at if at is not None else now_s()
    if owner_user_id is None:
        owner = (await s.execute(select(User).where(User.role == "owner").order_by(User.seq))).scalar()
        owner_user_id = owner.id if owner else None
    row, value = _new_key_row(secret, "admin", name or "", project_id=None, owner_user_id=owner_user_id,
                              service_account_id=None,
                              permissions=parse_permissions("read_only" if role == "reader" else "all"),
                              expires_at=t + ttl if ttl else None, at=t)
    s.add(row)
    await audit(s, actor, "api_key.created", {"id": row.id, "data": {"scopes": ["admin"]}}, resource_id=row.id, at=t)
    await bump_revision(s)
    return row, value


async def lookup_sha256(s: AsyncSession, secret: bytes, hashes: list[str]) -> list[tuple[str, ApiKey]]:
    """Keys whose SHA-256 is in ``hashes`` (the leak scanner never sends a key itself)."""
    digests = {keys.digest_of_sha256(secret, h): h for h in hashes}
    rows = (await s.execute(select(ApiKey).where(ApiKey.digest.in_(list(digests))))).scalars()
    return [(digests[r.digest], r) for r in rows]


def validate_sha256_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 1000:
        raise bad_request("'sha256' must be a list of 1 to 1000 hex SHA-256 digests.", param="sha256")
    out = []
    for h in value:
        if not isinstance(h, str) or len(h) != 64:
            raise bad_request("'sha256' entries must be 64 hex characters.", param="sha256")
        try:
            bytes.fromhex(h)
        except ValueError:
            raise bad_request("'sha256' entries must be 64 hex characters.", param="sha256") from None
        out.append(h.lower())
    return out


__all__ = ["APIError", "Actor"]
