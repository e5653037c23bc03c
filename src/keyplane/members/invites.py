"""Invites: an organization role and project memberships for an email, accepted by setting a password
through a one-time link (no e-mail server: the admin API answer, the CLI and the dashboard show the link).

The link's token is stored only as a keyed digest; it works once, until ``expires_at`` (7 days), and not
after the invite is deleted. Nor once its sender (``created_by``) has left the organization or no longer holds
what sending it took (:func:`sender_problem`): an invite carries its sender's authority, not more. That
includes its ``projects``: accepting adds the invitee to each, so sending it takes, for every listed project,
what adding a member there directly takes (``api.project.write`` in that project, organization-wide or from a
project role held there), at send time and again at acceptance.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids, keys
from keyplane.control import Actor, audit, bump_revision, now_s
from keyplane.errors import bad_request, conflict, forbidden, not_found
from keyplane.members import grants, permissions
from keyplane.members.models import Invite, ProjectUser
from keyplane.members.ops import check_project_role
from keyplane.scopes import ALL
from keyplane.store.models import Project, User

INVITE_TTL_SECONDS = 7 * 86400
MAX_INVITE_PROJECTS = 100
TOKEN_PREFIX = "kpinv_"
ACCEPT_PATH = "/invite/"


def status(inv: Invite, now: float) -> str:
    if inv.accepted_at is not None:
        return "accepted"
    return "expired" if now >= inv.expires_at else "pending"


def shape(inv: Invite, now: float) -> dict[str, Any]:
    return {
        "object": "organization.invite",
        "id": inv.id,
        "email": inv.email,
        "role": inv.role,
        "status": status(inv, now),
        "created_at": inv.created_at,
        "expires_at": inv.expires_at,
        "accepted_at": inv.accepted_at,
        "projects": orjson.loads(inv.projects),
        "created_by": inv.created_by,
    }  # keyplane extension: the sending user's id (None: the CLI)


def project_need(project_id: str) -> str:
    """What adding a member to the project takes: the permission of the direct call (projects.users.create)."""
    return permissions.required("POST", f"/v1/organization/projects/{project_id}/users")


def _projects_missing(plist: list[dict[str, str]], granted_in: Callable[[str], frozenset[str]]) -> list[str]:
    """The listed projects whose members the holder of ``granted_in`` (project id -> permissions) may not add."""
    return [p["id"] for p in plist if project_need(p["id"]) not in granted_in(p["id"])]


def _token_digest(secret: bytes, token: str) -> str:
    return keys.digest(secret, token)


async def _check_projects(s: AsyncSession, value: Any) -> list[dict[str, str]]:
    if value is None:  # as on the platform: no list given = the default (oldest active) project
        p = (await s.execute(select(Project).where(Project.status == "active").order_by(Project.seq))).scalar()
        return [{"id": p.id, "role": "member"}] if p is not None else []
    if not isinstance(value, list) or len(value) > MAX_INVITE_PROJECTS:
        raise bad_request(
            f"'projects' must be a list of at most {MAX_INVITE_PROJECTS} {{id, role}} objects.",
            param="projects",
            code="invalid_value",
        )
    out: dict[str, str] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise bad_request(
                "Each entry of 'projects' must be an object with 'id' and 'role'.",
                param="projects",
                code="invalid_value",
            )
        control.ensure_active(await control.get_project(s, item["id"]))
        out[item["id"]] = check_project_role(item.get("role"))
    return [{"id": k, "role": v} for k, v in out.items()]


async def create_invite(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    *,
    email: Any,
    role: Any,
    projects: Any = None,
    granted_in: Callable[[str], frozenset[str]] | None = None,
) -> tuple[Invite, str]:
    """A new invite and its one-time token (returned once, never stored). ``granted_in``: what the sender may
    do in a call on a given project (None: the CLI, unchecked); 403 ``insufficient_permissions`` when a listed
    project (the default one included) is one they could not add a member to directly."""
    addr = (control.check_name(email, "email") or "").lower()
    if "@" not in addr:
        raise bad_request("'email' must be an email address.", param="email", code="invalid_value")
    org_role = control.check_role(role)
    if (await s.execute(select(User.id).where(User.email == addr))).scalar():
        raise conflict(f"A user with email {addr} already exists.", code="user_exists")
    t = now_s()
    pending = (
        await s.execute(
            select(Invite.id).where(Invite.email == addr, Invite.accepted_at.is_(None), Invite.expires_at > t)
        )
    ).scalar()
    if pending:
        raise conflict(
            f"An invite for {addr} is already pending ({pending}); delete it to send a new one.", code="invite_exists"
        )
    plist = await _check_projects(s, projects)
    missing = _projects_missing(plist, granted_in) if granted_in is not None else []
    if missing:
        raise forbidden(
            f"You cannot invite someone into project(s) {', '.join(missing)}: adding a member there takes "
            f"{project_need(missing[0])} in that project, which you do not hold. List only projects you manage "
            "in 'projects' (an empty list for none; no list means the default project).",
            code="insufficient_permissions",
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    sender = (actor.detail or {}).get("user")
    inv = Invite(
        id=ids.new_id("invite-"),
        email=addr,
        role=org_role,
        projects=orjson.dumps(plist).decode(),
        token_digest=_token_digest(secret, token),
        created_at=t,
        expires_at=t + INVITE_TTL_SECONDS,
        created_by=sender.get("id") if isinstance(sender, dict) else None,
    )
    s.add(inv)
    await audit(
        s, actor, "invite.sent", {"id": inv.id, "data": {"email": addr, "role": org_role}}, resource_id=inv.id, at=t
    )
    await bump_revision(s)
    return inv, token


async def get_invite(s: AsyncSession, invite_id: str) -> Invite:
    inv = (await s.execute(select(Invite).where(Invite.id == invite_id))).scalar()
    if inv is None:
        raise not_found(f"No invite found with id '{invite_id}'.", param="invite_id")
    return inv


async def list_invites(s: AsyncSession, *, after: str | None = None, limit: int = 20) -> tuple[list[Invite], bool]:
    """A page of invites (pending, accepted, expired) in creation order: (invites, has_more)."""
    return await control.page(s, Invite, select(Invite), after=after, limit=limit)


async def all_invites(s: AsyncSession) -> list[Invite]:
    """Every invite (pending, accepted, expired) in creation order."""
    return list((await s.execute(select(Invite).order_by(Invite.seq))).scalars())


async def delete_invite(s: AsyncSession, actor: Actor, invite_id: str) -> None:
    inv = await get_invite(s, invite_id)
    if inv.accepted_at is not None:
        raise bad_request("The invite was accepted; remove the user instead.", code="invite_accepted")
    await s.delete(inv)
    await audit(s, actor, "invite.deleted", {"id": inv.id}, resource_id=inv.id)
    await bump_revision(s)


async def find_by_token(s: AsyncSession, secret: bytes, token: str, now: float) -> Invite | None:
    """The pending invite of a link's token, or None (unknown, used, deleted or expired: all alike)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    inv = (await s.execute(select(Invite).where(Invite.token_digest == _token_digest(secret, token)))).scalar()
    if inv is None or status(inv, now) != "pending":
        return None
    return inv


def needs(inv: Invite) -> frozenset[str]:
    """What sending the invite took, and what its sender must still hold for it to be accepted: the
    organization role it gives (all four permissions for ``owner``, keyplane.members.permissions
    .require_role_grant), and ``api.organization.write`` (creating invites)."""
    return permissions.ROLES.get(inv.role, permissions.ROLES["owner"]) | {permissions.ORG_WRITE}


async def sender_problem(s: AsyncSession, inv: Invite) -> str | None:
    """Why the invite can no longer be accepted because of its sender, or None. Invites from the CLI (and
    those sent before keyplane recorded senders) have none to check."""
    if inv.created_by is None:
        return None
    held = await grants.of_user(s, inv.created_by)  # fresh from the store, as the write it guards
    if not held:
        return (
            "The person who sent this invite is no longer a member of the organization, so it can no "
            "longer be accepted. Ask an owner for a new invite."
        )
    missing = sorted(needs(inv) - held)
    if missing:
        return (
            f"The person who sent this invite no longer holds the authority to invite you as '{inv.role}' "
            f"(missing: {', '.join(missing)}), so it can no longer be accepted. Ask an owner for a new invite."
        )
    listed = [p for p in orjson.loads(inv.projects) if isinstance(p, dict) and isinstance(p.get("id"), str)]
    active = set(
        (
            await s.execute(
                select(Project.id).where(Project.id.in_([p["id"] for p in listed]), Project.status == "active")
            )
        ).scalars()
    )  # accepting skips the others: nobody is added there
    if active:
        uid = inv.created_by
        scoped = {uid: (await grants.load_projects(s)).get(uid, {})}
        lost = _projects_missing(
            [p for p in listed if p["id"] in active],
            lambda pid: permissions.of_key_in_project(ALL, uid, {uid: held}, scoped, pid),
        )
        if lost:
            return (
                f"The person who sent this invite no longer holds the authority to add members to project(s) "
                f"{', '.join(lost)} (missing: {project_need(lost[0])} there), so it can no longer be accepted. "
                "Ask an owner for a new invite."
            )
    return None


async def accept_invite(s: AsyncSession, secret: bytes, token: str, *, password_hash: str, name: str = "") -> User:
    """Spend the token (once, even under concurrent tries), add the user and their memberships; refused (403
    ``invite_sender_unauthorized``, nothing spent) when the sender no longer holds what the invite gives."""
    t = now_s()
    inv = await find_by_token(s, secret, token, t)
    if inv is None:
        raise bad_request("This invite link is not valid: it was used, deleted, or has expired.", code="invite_invalid")
    problem = await sender_problem(s, inv)
    if problem is not None:
        raise forbidden(problem, code="invite_sender_unauthorized")
    spent = await s.execute(
        update(Invite)
        .where(Invite.id == inv.id, Invite.token_digest == inv.token_digest)
        .values(token_digest=None, accepted_at=t)
    )
    if not getattr(spent, "rowcount", 0):
        raise bad_request("This invite link is not valid: it was used, deleted, or has expired.", code="invite_invalid")
    actor = Actor("session", None, {"user": {"email": inv.email}, "via": f"invite {inv.id}"})
    user = await control.add_user(
        s, actor, email=inv.email, role=inv.role, name=name, password_hash=password_hash, at=t
    )
    for p in orjson.loads(inv.projects):
        if (await s.execute(select(Project.id).where(Project.id == p["id"], Project.status == "active"))).scalar():
            s.add(ProjectUser(project_id=p["id"], user_id=user.id, role=p["role"], added_at=t))
    await audit(s, actor, "invite.accepted", {"id": inv.id}, resource_id=inv.id, at=t)
    await bump_revision(s)
    return user
