"""Spend alerts in the official SDK's shapes: creating, reading, updating and deleting them.

An alert notifies once per month when its scope's spend passes its threshold; the firing itself is
billing.spend_firing.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids
from keyplane.billing.models import SpendAlert
from keyplane.billing.spend import OBJECT, check_currency, threshold_amount
from keyplane.domain import Invalid, NotFound


def _channel(body: dict[str, Any]) -> tuple[list[str], str | None]:
    ch = body.get("notification_channel")
    if ch is None:
        raise Invalid(
            "Missing required parameter: 'notification_channel'.",
            param="notification_channel",
            code="missing_required_parameter",
        )
    if not isinstance(ch, dict) or ch.get("type") != "email":
        raise Invalid(
            "'notification_channel.type' must be 'email'.", param="notification_channel", code="invalid_value"
        )
    rec = ch.get("recipients")
    if (
        not isinstance(rec, list)
        or not rec
        or len(rec) > 100
        or any(not isinstance(r, str) or "@" not in r or len(r) > 320 for r in rec)
    ):
        raise Invalid(
            "'notification_channel.recipients' must be a list of 1 to 100 email addresses.",
            param="notification_channel",
            code="invalid_value",
        )
    prefix = ch.get("subject_prefix")
    if prefix is not None and (not isinstance(prefix, str) or len(prefix) > 200):
        raise Invalid(
            "'notification_channel.subject_prefix' must be a string of at most 200 characters.",
            param="notification_channel",
            code="invalid_value",
        )
    return [r.strip() for r in rec], prefix


async def create_alert(
    s: AsyncSession, actor: control.Actor, scope: str, sid: str, body: dict[str, Any], now: float
) -> SpendAlert:
    check_currency(body)
    cents = threshold_amount(body)
    recipients, prefix = _channel(body)
    t = int(now)
    a = SpendAlert(
        id=ids.new_id("spend_alert_"),
        scope=scope,
        scope_id=sid,
        threshold_cents=cents,
        currency="USD",
        interval="month",
        recipients=orjson.dumps(recipients).decode(),
        subject_prefix=prefix,
        created_at=t,
    )
    s.add(a)
    await control.audit(
        s,
        actor,
        "spend_alert.created",
        {"id": a.id, "data": {"threshold_amount": cents, "recipients": recipients}},
        project_id=sid if scope == "project" else None,
        resource_id=a.id,
        at=t,
    )
    await control.bump_revision(s)
    return a


async def page_alerts(
    s: AsyncSession, scope: str, sid: str, *, after: str | None, before: str | None, limit: int, descending: bool
) -> tuple[list[SpendAlert], bool]:
    """One page of a scope's spend alerts (control.page's cursors) and whether more follow."""
    stmt = select(SpendAlert).where(SpendAlert.scope == scope, SpendAlert.scope_id == sid)
    rows, more = await control.page(s, SpendAlert, stmt, after=after, before=before, limit=limit, descending=descending)
    return list(rows), more


async def get_alert(s: AsyncSession, scope: str, sid: str, alert_id: str) -> SpendAlert:
    a = (
        await s.execute(
            select(SpendAlert).where(SpendAlert.id == alert_id, SpendAlert.scope == scope, SpendAlert.scope_id == sid)
        )
    ).scalar()
    if a is None:
        raise NotFound(f"No spend alert found with id '{alert_id}'.", param="alert_id")
    return a


async def update_alert(
    s: AsyncSession, actor: control.Actor, scope: str, sid: str, alert_id: str, body: dict[str, Any], now: float
) -> SpendAlert:
    a = await get_alert(s, scope, sid, alert_id)
    check_currency(body)
    cents = threshold_amount(body)
    recipients, prefix = _channel(body)
    if cents != a.threshold_cents:
        a.fired_period = None  # a new threshold may fire again this month
    a.threshold_cents, a.recipients, a.subject_prefix = cents, orjson.dumps(recipients).decode(), prefix
    await control.audit(
        s,
        actor,
        "spend_alert.updated",
        {"id": a.id, "changes_requested": {"threshold_amount": cents, "recipients": recipients}},
        project_id=sid if scope == "project" else None,
        resource_id=a.id,
        at=int(now),
    )
    await control.bump_revision(s)
    return a


async def delete_alert(s: AsyncSession, actor: control.Actor, scope: str, sid: str, alert_id: str, now: float) -> None:
    a = await get_alert(s, scope, sid, alert_id)
    await s.delete(a)
    await control.audit(
        s,
        actor,
        "spend_alert.deleted",
        {"id": a.id},
        project_id=sid if scope == "project" else None,
        resource_id=a.id,
        at=int(now),
    )
    await control.bump_revision(s)


def alert_object(scope: str, a: SpendAlert) -> dict[str, Any]:
    ch: dict[str, Any] = {"type": "email", "recipients": orjson.loads(a.recipients)}
    if a.subject_prefix is not None:
        ch["subject_prefix"] = a.subject_prefix
    return {
        "object": f"{OBJECT[scope]}.spend_alert",
        "id": a.id,
        "currency": "USD",
        "interval": "month",
        "threshold_amount": a.threshold_cents,
        "notification_channel": ch,
    }


def alert_deleted(scope: str, alert_id: str) -> dict[str, Any]:
    return {"object": f"{OBJECT[scope]}.spend_alert.deleted", "id": alert_id, "deleted": True}
