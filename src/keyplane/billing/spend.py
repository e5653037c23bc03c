"""Spend limits (hard, monthly) in the official SDK's shapes, and the request-body checks that spend
limits and spend alerts (billing.spend_alerts) share.

Limits exist for the organization, a project, and (keyplane extension) a key; each is one row of
``spend_limits``. ``enforcement.status`` is "enforcing" unless the limit was set with
``{"enforcement": {"status": "inactive"}}`` (keyplane: kept and shown, not enforced).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.billing.models import SpendLimit
from keyplane.billing.state import CENT, period_bounds
from keyplane.domain import Invalid, NotFound

OBJECT = {"organization": "organization", "project": "project", "api_key": "api_key"}
MAX_CENTS = 10**11


def check_currency(body: dict[str, Any]) -> None:
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


def threshold_amount(body: dict[str, Any]) -> int:
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


async def find_limit(s: AsyncSession, scope: str, sid: str) -> SpendLimit | None:
    """The spend limit of a scope, if one is set."""
    return (await s.execute(select(SpendLimit).where(SpendLimit.scope == scope, SpendLimit.scope_id == sid))).scalar()


async def ledger_spent(s: AsyncSession, period: str, scope: str, counter: str) -> int:
    """Micro-dollars the SQL ledger holds for a scope's counter in ``period`` (what a restart seeds it from)."""
    from sqlalchemy import func

    from keyplane.billing.models import SpendLedger

    total = await s.execute(
        select(func.coalesce(func.sum(SpendLedger.micros), 0)).where(
            SpendLedger.period == period, SpendLedger.scope == scope, SpendLedger.scope_id == counter
        )
    )
    return int(total.scalar() or 0)


async def get_limit(s: AsyncSession, scope: str, sid: str) -> SpendLimit:
    row = await find_limit(s, scope, sid)
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
    check_currency(body)
    cents = threshold_amount(body)
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
        # keyplane extensions: this month's spend (cents, rounded up; and exact, in micro-dollars, as the 429s and
        # `keyplane doctor` compare it) and when the month ends
        "spent": -(-spent_micros // CENT),
        "spent_micros": spent_micros,
        "resets_at": period_bounds(now)[1],
    }


def limit_deleted(scope: str) -> dict[str, Any]:
    return {"object": f"{OBJECT[scope]}.spend_limit.deleted", "deleted": True}
