"""Rules changed over the API, in SQL: read, create, change, delete (the control plane side)."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.domain import Invalid, NotFound
from keyplane.guard.models import GuardRuleRow
from keyplane.guard.rules import Rule, RuleError, effective, rule_from_json


def _bad(e: RuleError) -> Invalid:
    return Invalid(e.message, param=e.field, code="invalid_value")


async def load_stored(s: AsyncSession) -> tuple[dict[str, Rule | None], dict[str, int]]:
    """Stored rules by name (None: a deleted config rule) and when each was last changed."""
    rows = (await s.execute(select(GuardRuleRow).order_by(GuardRuleRow.seq))).scalars()
    out: dict[str, Rule | None] = {}
    times: dict[str, int] = {}
    for r in rows:
        times[r.name] = r.updated_at
        if r.definition is None:
            out[r.name] = None
            continue
        try:
            out[r.name] = rule_from_json(orjson.loads(r.definition), "api")
        except RuleError:
            out[r.name] = None  # a rule stored by a newer version that this one cannot read: ignore it
    return out, times


def _definition(rule: Rule) -> str:
    return orjson.dumps(msgspec.to_builtins(rule.spec)).decode()


async def _upsert(s: AsyncSession, name: str, definition: str | None, now: int) -> None:
    row = (await s.execute(select(GuardRuleRow).where(GuardRuleRow.name == name))).scalar()
    if row is None:
        s.add(GuardRuleRow(name=name, definition=definition, created_at=now, updated_at=now))
    else:
        row.definition, row.updated_at = definition, now


async def create_rule(s: AsyncSession, actor: control.Actor, base: dict[str, Rule], body: Any, now: int) -> Rule:
    try:
        rule = rule_from_json(body)
    except RuleError as e:
        raise _bad(e) from None
    stored, _ = await load_stored(s)
    if rule.name in effective(base, stored):
        raise Invalid(
            f"A guard rule named '{rule.name}' already exists; change it with "
            f"POST /v1/organization/guard/rules/{rule.name}.",
            param="name",
            code="duplicate_name",
        )
    await _upsert(s, rule.name, _definition(rule), now)
    await control.audit(
        s, actor, "guard.rule.created", {"id": rule.name, "data": msgspec.to_builtins(rule.spec)}, resource_id=rule.name
    )
    await control.bump_revision(s)
    return rule


async def update_rule(
    s: AsyncSession, actor: control.Actor, base: dict[str, Rule], name: str, body: Any, now: int
) -> Rule:
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object.", code="invalid_body")
    stored, _ = await load_stored(s)
    current = effective(base, stored).get(name)
    if current is None:
        raise NotFound(f"No guard rule named '{name}'.", param="name")
    if "name" in body and body["name"] != name:
        raise Invalid(
            "'name' cannot be changed; create a rule with the new name and delete this one.",
            param="name",
            code="invalid_value",
        )
    merged = msgspec.to_builtins(current.spec)
    merged.update({k: v for k, v in body.items() if k not in ("object", "id", "source", "updated_at")})
    try:
        rule = rule_from_json(merged)
    except RuleError as e:
        raise _bad(e) from None
    await _upsert(s, name, _definition(rule), now)
    await control.audit(s, actor, "guard.rule.updated", {"id": name, "changes_requested": body}, resource_id=name)
    await control.bump_revision(s)
    return rule


async def delete_rule(s: AsyncSession, actor: control.Actor, base: dict[str, Rule], name: str, now: int) -> None:
    stored, _ = await load_stored(s)
    if name not in effective(base, stored):
        raise NotFound(f"No guard rule named '{name}'.", param="name")
    if name in base:
        await _upsert(s, name, None, now)  # a tombstone: the config rule stays deleted
    else:
        row = (await s.execute(select(GuardRuleRow).where(GuardRuleRow.name == name))).scalar()
        if row is not None:
            await s.delete(row)
    await control.audit(s, actor, "guard.rule.deleted", {"id": name}, resource_id=name)
    await control.bump_revision(s)
