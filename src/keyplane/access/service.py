"""Access policies read and changed: the one implementation behind the admin API (routes.py, routes_ip.py),
the dashboard (keyplane.web.access) and the CLI (cli.py).

Each change runs in the caller's transaction with its audit entry and a revision bump; after the commit
the caller runs :func:`changed`, so this instance holds the new policies before it answers and the others
follow through the bus. A policy is addressed by ``Where``: (scope, target id, project id), scope
``org`` | ``project`` | ``key``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.access import inspect, ip
from keyplane.access.models import AccessPolicy
from keyplane.access.policy import ModelPolicy, Policies
from keyplane.domain import Invalid, NotFound
from keyplane.store.models import ApiKey, Project

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

MAX_MODEL_IDS = 1000
ORG: tuple[str, str, str | None] = ("org", "org", None)
Where = tuple[str, str, str | None]


async def target(s: AsyncSession, project_id: str | None, key_id: str | None = None) -> Where:
    """Where a policy lives: the organization (no project), a project, or one API key of it; 404 for an
    unknown project or key."""
    if project_id is None:
        return ORG
    if (await s.execute(select(Project.id).where(Project.id == project_id))).scalar() is None:
        raise NotFound(f"No project found with id '{project_id}'.", param="project_id")
    if key_id is None:
        return "project", project_id, project_id
    found = (await s.execute(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.project_id == project_id))).scalar()
    if found is None:
        raise NotFound(f"No API key found with id '{key_id}' in project '{project_id}'.", param="key_id")
    return "key", key_id, project_id


async def stored(s: AsyncSession, kind: str, scope: str, target_id: str) -> AccessPolicy | None:
    return (
        await s.execute(
            select(AccessPolicy).where(
                AccessPolicy.kind == kind, AccessPolicy.scope == scope, AccessPolicy.target_id == target_id
            )
        )
    ).scalar()


async def save(s: AsyncSession, kind: str, scope: str, target_id: str, value: dict[str, Any], now: int) -> None:
    row = await stored(s, kind, scope, target_id)
    text = orjson.dumps(value).decode()
    if row is None:
        s.add(AccessPolicy(kind=kind, scope=scope, target_id=target_id, value=text, updated_at=now))
    else:
        row.value, row.updated_at = text, now


async def drop(
    s: AsyncSession, actor: control.Actor, kind: str, scope: str, target_id: str, project_id: str | None, event: str
) -> None:
    """Delete one policy, audit it and move the revision: the admin API's deletes and the CLI's alike."""
    await s.execute(
        delete(AccessPolicy).where(
            AccessPolicy.kind == kind, AccessPolicy.scope == scope, AccessPolicy.target_id == target_id
        )
    )
    await control.audit(
        s, actor, event, {"id": target_id, "scope": scope}, project_id=project_id, resource_id=target_id
    )
    await control.bump_revision(s)


async def changed(rt: Runtime) -> None:
    """After the commit: this instance's policies at once; the others through the bus (the snapshot)."""
    pols: Policies | None = rt.features.access
    if pols is not None:
        await pols.load(rt.engine)
    if rt.publisher is not None:
        await rt.publisher.drain()


# --- model permissions -----------------------------------------------------------------------------


def model_policy(mode: Any, model_ids: Any) -> ModelPolicy:
    """A checked policy (400 ``invalid_value`` naming the field otherwise); ids stripped, duplicates dropped."""
    if mode not in ("allow_list", "deny_list"):
        raise Invalid("'mode' must be 'allow_list' or 'deny_list'.", param="mode", code="invalid_value")
    if not isinstance(model_ids, list) or not all(isinstance(m, str) and 0 < len(m.strip()) <= 256 for m in model_ids):
        raise Invalid(
            "'model_ids' must be a list of model ids (strings of 1 to 256 characters).",
            param="model_ids",
            code="invalid_value",
        )
    if len(model_ids) > MAX_MODEL_IDS:
        raise Invalid(f"'model_ids' may hold at most {MAX_MODEL_IDS} ids.", param="model_ids", code="invalid_value")
    return ModelPolicy(str(mode), tuple(dict.fromkeys(m.strip() for m in model_ids)))


async def model_permissions(s: AsyncSession, where: Where) -> ModelPolicy | None:
    """The stored policy, or None when none is set (every model allowed)."""
    row = await stored(s, "model", where[0], where[1])
    if row is None:
        return None
    data = orjson.loads(row.value)
    return ModelPolicy(data["mode"], tuple(data["model_ids"]))


async def set_model_permissions(
    s: AsyncSession, actor: control.Actor, where: Where, pol: ModelPolicy, now: int
) -> None:
    scope, target_id, pid = where
    await save(s, "model", scope, target_id, {"mode": pol.mode, "model_ids": list(pol.model_ids)}, now)
    await control.audit(
        s,
        actor,
        "model_permissions.updated",
        {"id": target_id, "scope": scope, "changes_requested": pol.to_json()},
        project_id=pid,
        resource_id=target_id,
    )
    await control.bump_revision(s)


async def delete_model_permissions(s: AsyncSession, actor: control.Actor, where: Where) -> None:
    await drop(s, actor, "model", where[0], where[1], where[2], "model_permissions.deleted")


# --- hosted tool permissions ---------------------------------------------------------------------


def _tools_json(value: dict[str, Any]) -> dict[str, Any]:
    return {t: {"enabled": bool(value.get(t, {}).get("enabled", True))} for t in inspect.TOOLS}


def tool_changes(body: dict[str, Any]) -> dict[str, bool]:
    """``{"web_search": {"enabled": false}, ...}`` checked: tool name -> enabled (a None value changes nothing)."""
    unknown = sorted(set(body) - set(inspect.TOOLS))
    if unknown:
        raise Invalid(
            f"Unknown hosted tool '{unknown[0]}'; known: {', '.join(inspect.TOOLS)}.",
            param=unknown[0],
            code="invalid_value",
        )
    out: dict[str, bool] = {}
    for t, v in body.items():
        if v is None:
            continue
        if not isinstance(v, dict) or not isinstance(v.get("enabled"), bool):
            raise Invalid(f"'{t}' must be an object with a boolean 'enabled'.", param=t, code="invalid_value")
        out[t] = v["enabled"]
    return out


async def tool_permissions(s: AsyncSession, where: Where) -> dict[str, Any]:
    """Every hosted tool with ``enabled`` (true unless turned off)."""
    row = await stored(s, "tools", where[0], where[1])
    return _tools_json({} if row is None else orjson.loads(row.value))


async def set_tool_permissions(
    s: AsyncSession, actor: control.Actor, where: Where, changes: dict[str, bool], now: int
) -> dict[str, Any]:
    scope, target_id, pid = where
    value = await tool_permissions(s, where)
    for t, enabled in changes.items():
        value[t] = {"enabled": enabled}
    await save(s, "tools", scope, target_id, value, now)
    await control.audit(
        s,
        actor,
        "hosted_tool_permissions.updated",
        {"id": target_id, "scope": scope, "changes_requested": {t: {"enabled": e} for t, e in changes.items()}},
        project_id=pid,
        resource_id=target_id,
    )
    await control.bump_revision(s)
    return value


# --- IP allowlists -------------------------------------------------------------------------------


def cidr_list(cidrs: Any) -> tuple[tuple[ip.IPNet, ...], list[str]]:
    """The parsed ranges and their normal text (400 ``invalid_value`` naming the bad entry)."""
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise Invalid("'cidrs' must be a list of IP addresses or CIDR ranges.", param="cidrs", code="invalid_value")
    if len(cidrs) > ip.MAX_CIDRS:
        raise Invalid(f"'cidrs' may hold at most {ip.MAX_CIDRS} ranges.", param="cidrs", code="invalid_value")
    try:
        nets = ip.parse_cidrs(cidrs)
    except ValueError as e:
        raise Invalid(str(e), param="cidrs", code="invalid_value") from None
    return nets, list(dict.fromkeys(str(n) for n in nets))


def check_lockout(where: Where, nets: tuple[ip.IPNet, ...], seen: str, confirm: bool) -> None:
    """The organization's list holds the admin API and the dashboard too: a list that leaves out ``seen``,
    the address the change comes from, would lock its caller out (the CLI on the server lifts it)."""
    if nets and where[0] == "org" and not confirm and not ip.allows(nets, seen):
        raise Invalid(
            f"The list does not include the address this call comes from ({seen}): it would "
            "lock you out of the admin API and the dashboard. Add that address, or send "
            '"confirm_lockout": true (the CLI on the server can always lift the list: '
            "keyplane access ip-allowlist clear).",
            param="cidrs",
            code="ip_allowlist_lockout",
        )


def _ip_json(where: Where, row: AccessPolicy | None) -> dict[str, Any]:
    scope, target_id, _ = where
    cidrs = orjson.loads(row.value)["cidrs"] if row is not None else []
    return {
        "object": "ip_allowlist",
        "scope": "organization" if scope == "org" else scope,
        "id": None if scope == "org" else target_id,
        "cidrs": cidrs,
        "enabled": bool(cidrs),
        "updated_at": row.updated_at if row is not None else None,
    }


async def ip_allowlist(s: AsyncSession, where: Where) -> dict[str, Any]:
    return _ip_json(where, await stored(s, "ip", where[0], where[1]))


async def set_ip_allowlist(
    s: AsyncSession, actor: control.Actor, where: Where, normal: list[str], now: int
) -> dict[str, Any]:
    """Replace the list (an empty one lifts it) with ``normal`` (from :func:`cidr_list`)."""
    scope, target_id, pid = where
    await save(s, "ip", scope, target_id, {"cidrs": normal}, now)
    await control.audit(
        s,
        actor,
        "ip_allowlist.updated",
        {"id": target_id, "scope": scope, "changes_requested": {"cidrs": normal}},
        project_id=pid,
        resource_id=target_id,
    )
    await control.bump_revision(s)
    return await ip_allowlist(s, where)


async def delete_ip_allowlist(s: AsyncSession, actor: control.Actor, where: Where) -> None:
    await drop(s, actor, "ip", where[0], where[1], where[2], "ip_allowlist.deleted")


# --- every policy ----------------------------------------------------------------------------------


def summary(kind: str, value: dict[str, Any]) -> str:
    if kind == "ip":
        return ", ".join(value.get("cidrs") or []) or "(none: lifted)"
    if kind == "model":
        return f"{value['mode']}: " + (", ".join(value["model_ids"]) or "(none)")
    off = sorted(t for t, v in value.items() if isinstance(v, dict) and v.get("enabled") is False)
    return "disabled: " + (", ".join(off) or "(none)")


async def all_policies(s: AsyncSession) -> list[dict[str, Any]]:
    """Every policy set, with a one-line summary (``keyplane access show``, the dashboard's Access page)."""
    rows = (
        await s.execute(select(AccessPolicy).order_by(AccessPolicy.kind, AccessPolicy.scope, AccessPolicy.target_id))
    ).scalars()
    out = []
    for r in rows:
        value = orjson.loads(r.value)
        out.append(
            {
                "kind": r.kind,
                "scope": "organization" if r.scope == "org" else r.scope,
                "id": None if r.scope == "org" else r.target_id,
                "value": value,
                "summary": summary(r.kind, value),
                "updated_at": r.updated_at,
            }
        )
    return out
