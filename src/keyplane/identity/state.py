"""The in-process view of federation rules and providers that the request path checks tokens against.

Read from SQL at start and again after every change the snapshot applies (every control-plane change
bumps the revision and reaches every instance through the bus or the poll: DESIGN.md hot-path rule 1), so
a disabled rule or provider stops its access tokens within the snapshot's propagation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow
from keyplane.periodic import backoff, cancel_and_wait
from keyplane.snapshot import Snapshot

log = logging.getLogger("keyplane.identity")


@dataclass(frozen=True, slots=True)
class RuleEntry:
    enabled: bool
    provider_id: str
    service_account_id: str
    key_id: str
    generation: str = ""  # what the rule and its provider were when a token was issued (tokens.generation)


def generation(
    *,
    issuer: str,
    audience: str,
    verification: str,
    transformations: str,
    project_id: str,
    service_account_id: str,
    matchers: str,
) -> str:
    """A digest of everything that decided whether a subject token earned an access token: change any of it
    (the rule's matchers, the provider's issuer, audience, keys or transformations) and the access tokens
    issued under the old terms stop working at once, as a disabled rule's do."""
    h = hashlib.sha256()
    for part in (issuer, audience, verification, transformations, project_id, service_account_id, matchers):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


class IdentityState:
    def __init__(self, engine: AsyncEngine, snapshot: Snapshot) -> None:
        self.engine = engine
        self.rules: dict[str, RuleEntry] = {}
        self.providers: dict[str, bool] = {}
        self.by_key: dict[str, str] = {}  # a rule's keyless key id -> the rule id
        self._task: asyncio.Task[None] | None = None
        self._again = False
        snapshot.on_change(self.schedule)

    def rule(self, rule_id: str) -> RuleEntry | None:
        return self.rules.get(rule_id)

    def provider_enabled(self, provider_id: str) -> bool:
        return self.providers.get(provider_id, False)

    def key_ended(self, key_id: str, generation: str | None = None) -> str | None:
        """Why a rule's keyless key may no longer act (its rule deleted or disabled, its provider disabled, or,
        given the ``generation`` an access token was issued under, the rule or provider changed since), or
        None, also for every key that is not a rule's. Checked wherever the key's authority outlives the
        access token that proved it: realtime client secrets and sessions (keyplane.proxy.realtime)."""
        rule_id = self.by_key.get(key_id)
        if rule_id is None:
            return None
        rule = self.rules.get(rule_id)
        if rule is None:
            return "is no longer valid: its federation rule was deleted."
        if not rule.enabled:
            return "is no longer valid: its federation rule is disabled."
        if not self.providers.get(rule.provider_id, False):
            return "is no longer valid: its workload identity provider is disabled or deleted."
        if generation is not None and not hmac.compare_digest(generation, rule.generation):
            return "is no longer valid: its federation rule or provider changed since its token was issued."
        return None

    async def load(self) -> None:
        async with self.engine.connect() as conn:
            prows = (
                await conn.execute(
                    select(
                        WorkloadIdentityProviderRow.id,
                        WorkloadIdentityProviderRow.enabled,
                        WorkloadIdentityProviderRow.issuer,
                        WorkloadIdentityProviderRow.audience,
                        WorkloadIdentityProviderRow.verification,
                        WorkloadIdentityProviderRow.attribute_transformations,
                    )
                )
            ).all()
            rrows = (
                await conn.execute(
                    select(
                        FederationRuleRow.id,
                        FederationRuleRow.enabled,
                        FederationRuleRow.provider_id,
                        FederationRuleRow.service_account_id,
                        FederationRuleRow.key_id,
                        FederationRuleRow.project_id,
                        FederationRuleRow.attribute_matchers,
                    )
                )
            ).all()
        provs = {r.id: r for r in prows}
        rules: dict[str, RuleEntry] = {}
        for r in rrows:
            p = provs.get(r.provider_id)
            gen = (
                generation(
                    issuer=p.issuer,
                    audience=p.audience,
                    verification=p.verification,
                    transformations=p.attribute_transformations,
                    project_id=r.project_id,
                    service_account_id=r.service_account_id,
                    matchers=r.attribute_matchers,
                )
                if p
                else ""
            )
            rules[r.id] = RuleEntry(bool(r.enabled), r.provider_id, r.service_account_id, r.key_id, gen)
        self.providers = {r.id: bool(r.enabled) for r in prows}
        self.rules = rules
        self.by_key = {r.key_id: rid for rid, r in rules.items()}

    def schedule(self) -> None:
        """A reload after a snapshot change (coalesced: one runs at a time, one more if changes came meanwhile)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        # No running loop (a change applied from a worker thread): the next change catches up.
        with contextlib.suppress(RuntimeError):
            self._task = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        retries = 0
        while True:
            self._again = False
            try:
                await self.load()
            except Exception:
                # Not left for the next change to fix: a rule disabled in the change that failed to load would
                # keep its tokens working on this instance until then. Retried until it loads.
                delay = backoff(retries, 0.2, 5.0)  # 0.2 s, doubled per retry, at most 5 s
                log.warning("identity: reloading federation rules failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                retries += 1
                self._again = True
            if not self._again:
                return

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
