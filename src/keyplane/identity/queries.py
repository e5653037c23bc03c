"""The queries of workload identity federation's providers and rules, for the admin routes (routes.py,
rule_routes.py). The token exchange and the identity state read the tables on their own hot paths
(exchange.py, state.py).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane import control
from keyplane.errors import not_found
from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow


async def find_provider(s: AsyncSession, pid: str) -> WorkloadIdentityProviderRow:
    p = (await s.execute(select(WorkloadIdentityProviderRow).where(WorkloadIdentityProviderRow.id == pid))).scalar()
    if p is None:
        raise not_found(f"No workload identity provider found with id '{pid}'.")
    return p


async def find_rule(s: AsyncSession, pid: str, rid: str) -> FederationRuleRow:
    r = (
        await s.execute(
            select(FederationRuleRow).where(FederationRuleRow.id == rid, FederationRuleRow.provider_id == pid)
        )
    ).scalar()
    if r is None:
        raise not_found(f"No federation rule found with id '{rid}' for provider '{pid}'.")
    return r


async def list_providers(
    s: AsyncSession, *, after: str | None = None, limit: int = 20, descending: bool = True
) -> tuple[list[WorkloadIdentityProviderRow], bool]:
    """A page of the providers, newest first unless not ``descending``: (providers, has_more)."""
    return await control.page(
        s,
        WorkloadIdentityProviderRow,
        select(WorkloadIdentityProviderRow),
        after=after,
        limit=limit,
        descending=descending,
    )


async def list_rules(
    s: AsyncSession,
    pid: str,
    *,
    service_account_id: str | None = None,
    after: str | None = None,
    limit: int = 20,
    descending: bool = True,
) -> tuple[list[FederationRuleRow], bool]:
    """A page of a provider's rules (404 for an unknown provider), only ``service_account_id``'s when given,
    newest first unless not ``descending``: (rules, has_more)."""
    stmt = select(FederationRuleRow).where(FederationRuleRow.provider_id == pid)
    if service_account_id:
        stmt = stmt.where(FederationRuleRow.service_account_id == service_account_id)
    await find_provider(s, pid)
    return await control.page(s, FederationRuleRow, stmt, after=after, limit=limit, descending=descending)


async def rule_targets(s: AsyncSession, pid: str) -> list[tuple[str, str]]:
    """The (project id, service account id) of each of a provider's rules, repeats included."""
    rows = await s.execute(
        select(FederationRuleRow.project_id, FederationRuleRow.service_account_id).where(
            FederationRuleRow.provider_id == pid
        )
    )
    return [(r.project_id, r.service_account_id) for r in rows.all()]


async def has_rules(s: AsyncSession, pid: str) -> bool:
    """Whether the provider has any federation rule."""
    return (
        await s.execute(select(FederationRuleRow.id).where(FederationRuleRow.provider_id == pid))
    ).first() is not None
