"""Firing spend alerts (a background task, never the request path): once per month per alert, the
instance that moves ``fired_period`` in SQL notifies, through the shared alert sinks (keyplane.alerts)
and by email to the alert's own recipients.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import or_, update

from keyplane import control
from keyplane.billing.models import SpendAlert
from keyplane.billing.state import CENT, period_of

if TYPE_CHECKING:
    from keyplane.billing.engine import Billing

log = logging.getLogger("keyplane.billing")


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
    counter = {a.id: f"{period}:{a.scope}:{b.counter_id(a.scope, a.scope_id)}" for a in due}  # a key's: its line's
    spent = await b.limiter.spent(sorted(set(counter.values())))
    for a in due:
        value = spent.get(counter[a.id], (0, 0))[0]
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
