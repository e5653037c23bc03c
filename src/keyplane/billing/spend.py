"""Spend limits (hard, monthly) and spend alerts, in the official SDK's shapes, and alert firing.

Limits exist for the organization, a project, and (keyplane extension) a key; each is one row of
``spend_limits``. ``enforcement.status`` is "enforcing" unless the limit was set with
``{"enforcement": {"status": "inactive"}}`` (keyplane: kept and shown, not enforced). Alerts notify
through the shared alert sinks (keyplane.alerts) and by email to their own recipients, once per
month per alert: the instance that moves ``fired_period`` in SQL sends it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids
from keyplane.billing.models import SpendAlert, SpendLimit
from keyplane.billing.state import CENT, period_bounds, period_of
from keyplane.domain import Invalid, NotFound

if TYPE_CHECKING:
    from keyplane.billing.engine import Billing

log = logging.getLogger("keyplane.billing")

OBJECT = {"organization": "organization", "project": "project", "api_key": "api_key"}
MAX_CENTS = 10**11


def _currency(body: dict[str, Any]) -> None:
    c = body.get("currency", "USD")
    if not isinstance(c, str) or c.upper() != "USD":
        raise Invalid("'currency' must be 'USD'.", param="currency", code="invalid_value")
    i = body.get("interval", "month")
    if i != "month":
        raise Invalid(
            "'interval' must be 'month' (spend is counted per calendar month, UTC).",
            param="interval",
            code="invalid_value",
        )


def _amount(body: dict[str, Any]) -> int:
    v = body.get("threshold_amount")
    if v is None:
        raise Invalid(
            "Missing required parameter: 'threshold_amount' (integer cents).",
            param="threshold_amount",
            code="missing_required_parameter",
        )
    if isinstance(v, bool) or not isinstance(v, int):
        raise Invalid(
            "'threshold_amount' must be an integer number of cents.", param="threshold_amount", code="invalid_type"
        )
    if not 0 <= v <= MAX_CENTS:
        raise Invalid(
            f"'threshold_amount' must be between 0 and {MAX_CENTS} cents.",
            param="threshold_amount",
            code="invalid_value",
        )
    return v


def _enforcing(body: dict[str, Any]) -> bool:
    e = body.get("enforcement")
    if e is None:
        return True
    status = e.get("status") if isinstance(e, dict) else None
    if status not in ("enforcing", "inactive"):
        raise Invalid(
            "'enforcement.status' must be 'enforcing' or 'inactive'.", param="enforcement", code="invalid_value"
        )
    return status == "enforcing"


# --- limits ----------------------------------------------------------------------------------------


async def get_limit(s: AsyncSession, scope: str, sid: str) -> SpendLimit:
    row = (await s.execute(select(SpendLimit).where(SpendLimit.scope == scope, SpendLimit.scope_id == sid))).scalar()
    if row is None:
        what = {"organization": "the organization", "project": f"project '{sid}'", "api_key": f"API key '{sid}'"}
        raise NotFound(f"No spend limit is set for {what[scope]}.", code="spend_limit_not_found")
    return row


async def set_limit(
    s: AsyncSession,
    actor: control.Actor,
    scope: str,
    sid: str,
    project_id: str | None,
    body: dict[str, Any],
    now: float,
) -> SpendLimit:
    _currency(body)
    cents = _amount(body)
    enforcing = _enforcing(body)
    t = int(now)
    row = (await s.execute(select(SpendLimit).where(SpendLimit.scope == scope, SpendLimit.scope_id == sid))).scalar()
    if row is None:
        row = SpendLimit(
            scope=scope,
            scope_id=sid,
            project_id=project_id,
            threshold_cents=cents,
            currency="USD",
            interval="month",
            enforcing=enforcing,
            created_at=t,
            updated_at=t,
        )
        s.add(row)
    else:
        row.threshold_cents, row.enforcing, row.updated_at = cents, enforcing, t
    await control.audit(
        s,
        actor,
        "spend_limit.updated",
        {
            "id": f"{scope}:{sid}",
            "changes_requested": {
                "threshold_amount": cents,
                "currency": "USD",
                "interval": "month",
                "enforcement": "enforcing" if enforcing else "inactive",
            },
        },
        project_id=project_id,
        resource_id=sid,
        at=t,
    )
    await control.bump_revision(s)
    return row


async def delete_limit(
    s: AsyncSession, actor: control.Actor, scope: str, sid: str, project_id: str | None, now: float
) -> None:
    row = await get_limit(s, scope, sid)
    await s.delete(row)
    await control.audit(
        s, actor, "spend_limit.deleted", {"id": f"{scope}:{sid}"}, project_id=project_id, resource_id=sid, at=int(now)
    )
    await control.bump_revision(s)


def limit_object(scope: str, row: SpendLimit, spent_micros: int, now: float) -> dict[str, Any]:
    return {
        "object": f"{OBJECT[scope]}.spend_limit",
        "currency": "USD",
        "interval": "month",
        "threshold_amount": row.threshold_cents,
        "enforcement": {"status": "enforcing" if row.enforcing else "inactive"},
        # keyplane extensions: this month's spend (cents, rounded up) and when the month ends
        "spent": -(-spent_micros // CENT),
        "resets_at": period_bounds(now)[1],
    }


def limit_deleted(scope: str) -> dict[str, Any]:
    return {"object": f"{OBJECT[scope]}.spend_limit.deleted", "deleted": True}


# --- alerts ----------------------------------------------------------------------------------------


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
    _currency(body)
    cents = _amount(body)
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
    _currency(body)
    cents = _amount(body)
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


# --- firing (background task, never the request path) -------------------------------------------


async def check_alerts(b: Billing) -> None:
    """Fire each alert whose scope's spend this month passed its threshold, once per month."""
    alerts = b.cfg.alerts
    if not alerts:
        return
    now = b.rt.clock.now()
    period = period_of(now)
    due = [a for a in alerts if a.fired_period != period]
    if not due:
        return
    keys = sorted({f"{period}:{a.scope}:{a.scope_id}" for a in due})
    spent = await b.limiter.spent(keys)
    for a in due:
        value = spent.get(f"{period}:{a.scope}:{a.scope_id}", (0, 0))[0]
        if value < a.threshold_micros:
            continue
        async with b.rt.sessions() as s, s.begin():
            res = await s.execute(
                update(SpendAlert)
                .where(SpendAlert.id == a.id, or_(SpendAlert.fired_period.is_(None), SpendAlert.fired_period != period))
                .values(fired_period=period)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another instance fired it, or it was deleted
            await control.audit(
                s,
                control.SYSTEM_ACTOR,
                "spend_alert.triggered",
                {
                    "id": a.id,
                    "period": period,
                    "threshold_amount": a.threshold_micros // CENT,
                    "spent": -(-value // CENT),
                },
                project_id=a.scope_id if a.scope == "project" else None,
                resource_id=a.id,
                at=int(now),
            )
            await control.bump_revision(s)
        _notify(b, a, value, period)


def _notify(b: Billing, a: Any, spent_micros: int, period: str) -> None:
    from keyplane import alerts as sinks

    if a.scope == "project":
        p = b.rt.snapshot.projects.get(a.scope_id)
        what = f"project {p.name} ({a.scope_id})" if p else f"project {a.scope_id}"
    else:
        what = f"the organization ({a.scope_id})"
    summary = (
        f"Spend of {what} reached ${spent_micros / 1e6:,.2f} in {period}, past the alert threshold of "
        f"${a.threshold_micros / 1e6:,.2f}"
    )
    if a.subject_prefix:
        summary = f"{a.subject_prefix} {summary}"
    alert = sinks.Alert(
        event="spend.threshold",
        summary=summary,
        severity="warning",
        details={
            "alert_id": a.id,
            "scope": a.scope,
            "scope_id": a.scope_id,
            "period": period,
            "threshold_amount": a.threshold_micros // CENT,
            "spent": -(-spent_micros // CENT),
            "currency": "usd",
            "recipients": list(a.recipients),
        },
    )
    dispatcher = sinks.for_runtime(b.rt)
    dispatcher.send(alert)
    # The alert's own recipients get an email through the first email sink's SMTP server.
    section = b.rt.settings.file.alerts
    email = next((s for s in section.sinks if s.type == "email"), None)
    if email is None:
        if a.recipients:
            log.warning(
                "spend alert %s fired, but no email sink is configured in [alerts]: its recipients "
                "(%s) were not emailed",
                a.id,
                ", ".join(a.recipients),
            )
        return
    to = [r for r in a.recipients if r not in email.email_to]
    if not to:
        return
    cfg = msgspec.structs.replace(email, email_to=to, events=[])
    try:
        own = sinks.Dispatcher.from_config(msgspec.structs.replace(section, sinks=[cfg]))
    except sinks.AlertConfigError as e:
        log.error("spend alert %s: cannot email its recipients: %s", a.id, e)
        return

    async def deliver() -> None:
        try:
            await own.deliver_now(alert)
        finally:
            await own.aclose()

    b.spawn(deliver())
