"""Prepaid credit: grants feed the organization's balance; requests draw on it once a grant exists.

``POST /v1/organization/credit_grants`` adds a grant (integer cents, optional expiry and note);
the balance is granted - used - expired unused, kept in micro-dollars (fractions of a cent) and
shown in cents. ``[credit] enforce = true|false`` in keyplane.toml overrides "enforced once a first
grant exists".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control, ids
from keyplane.billing import tiers
from keyplane.billing.models import CreditGrant
from keyplane.billing.state import CENT
from keyplane.domain import Invalid

MAX_CENTS = 10**11  # a billion dollars: larger is a typo


def check_grant(body: dict[str, Any], now: float) -> tuple[int, str, int | None, str | None]:
    amount = body.get("amount")
    if amount is None:
        raise Invalid(
            "Missing required parameter: 'amount' (integer cents).", param="amount", code="missing_required_parameter"
        )
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise Invalid(
            "'amount' must be an integer number of cents, e.g. 2500 for $25.00.", param="amount", code="invalid_type"
        )
    if not 0 < amount <= MAX_CENTS:
        raise Invalid(f"'amount' must be between 1 and {MAX_CENTS} cents.", param="amount", code="invalid_value")
    currency = body.get("currency", "usd")
    if not isinstance(currency, str) or currency.lower() != "usd":
        raise Invalid(
            "'currency' must be 'usd' (the only currency keyplane bills in).", param="currency", code="invalid_value"
        )
    expires_at = body.get("expires_at")
    if expires_at is not None:
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise Invalid("'expires_at' must be a unix time in seconds.", param="expires_at", code="invalid_type")
        if expires_at <= now:
            raise Invalid("'expires_at' must be in the future.", param="expires_at", code="invalid_value")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise Invalid("'note' must be a string of at most 1000 characters.", param="note", code="invalid_value")
    unknown = set(body) - {"amount", "currency", "expires_at", "note"}
    if unknown:
        name = sorted(unknown)[0]
        raise Invalid(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    return amount, "usd", expires_at, note


async def create_grant(
    s: AsyncSession, actor: control.Actor, body: dict[str, Any], now: float, table: tiers.TierTable
) -> CreditGrant:
    amount, currency, expires_at, note = check_grant(body, now)
    if await control.get_org(s) is None:
        raise Invalid("keyplane is not initialized; run `keyplane init` first.")
    t = int(now)
    g = CreditGrant(
        id=ids.new_id("cg_"),
        amount_cents=amount,
        currency=currency,
        created_at=t,
        expires_at=expires_at,
        note=note,
        used_micros=0,
    )
    s.add(g)
    await s.flush()
    await control.audit(
        s,
        actor,
        "credit_grant.created",
        {"id": g.id, "data": {"amount": amount, "currency": currency, "expires_at": expires_at, "note": note}},
        resource_id=g.id,
        at=t,
    )
    await control.bump_revision(s)
    await tiers.promote(s, table, now)
    return g


async def grants(s: AsyncSession) -> list[CreditGrant]:
    """Every credit grant, oldest first."""
    return list((await s.execute(select(CreditGrant).order_by(CreditGrant.seq))).scalars())


def grant_object(g: CreditGrant) -> dict[str, Any]:
    return {
        "object": "organization.credit_grant",
        "id": g.id,
        "amount": g.amount_cents,
        "currency": g.currency,
        "created_at": g.created_at,
        "expires_at": g.expires_at,
        "note": g.note,
    }


def balance_object(
    granted_cents: int, used_micros: int, cap_micros: int, reserved_micros: int, enforced: bool
) -> dict[str, Any]:
    """Cents for the API (used rounded up, available down: never more than there is), micro-dollars beside."""
    expired = granted_cents * CENT - cap_micros
    available = cap_micros - used_micros
    return {
        "object": "organization.credit_balance",
        "currency": "usd",
        "granted": granted_cents,
        "used": -(-used_micros // CENT),
        "available": max(0, available // CENT),
        "expired": max(0, expired // CENT),
        "reserved": -(-reserved_micros // CENT),
        "enforced": enforced,
        "used_micros": used_micros,
        "available_micros": available,
    }
