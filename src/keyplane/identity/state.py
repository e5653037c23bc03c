"""The in-process view of federation rules and providers that the request path checks tokens against.

Read from SQL at start and again after every change the snapshot applies (every control-plane change
bumps the revision and reaches every instance through the bus or the poll: DESIGN.md hot-path rule 1), so
a disabled rule or provider stops its access tokens within the snapshot's propagation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane.identity.models import FederationRuleRow, WorkloadIdentityProviderRow
from keyplane.snapshot import Snapshot

log = logging.getLogger("keyplane.identity")


@dataclass(frozen=True, slots=True)
class RuleEntry:
    enabled: bool
    provider_id: str
    service_account_id: str
    key_id: str


class IdentityState:
    def __init__(self, engine: AsyncEngine, snapshot: Snapshot) -> None:
        self.engine = engine
        self.rules: dict[str, RuleEntry] = {}
        self.providers: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._again = False
        snapshot.on_change(self.schedule)

    def rule(self, rule_id: str) -> RuleEntry | None:
        return self.rules.get(rule_id)

    def provider_enabled(self, provider_id: str) -> bool:
        return self.providers.get(provider_id, False)

    async def load(self) -> None:
        async with self.engine.connect() as conn:
            prows = (await conn.execute(select(WorkloadIdentityProviderRow.id,
                                               WorkloadIdentityProviderRow.enabled))).all()
            rrows = (await conn.execute(select(
                FederationRuleRow.id, FederationRuleRow.enabled, FederationRuleRow.provider_id,
                FederationRuleRow.service_account_id, FederationRuleRow.key_id))).all()
        self.providers = {r.id: bool(r.enabled) for r in prows}
        self.rules = {r.id: RuleEntry(bool(r.enabled), r.provider_id, r.service_account_id, r.key_id)
                      for r in rrows}

    def schedule(self) -> None:
        """A reload after a snapshot change (coalesced: one runs at a time, one more if changes came meanwhile)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        # No running loop (a change applied from a worker thread): the next change catches up.
        with contextlib.suppress(RuntimeError):
            self._task = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._again = False
            try:
                await self.load()
            except Exception:
                log.warning("identity: reloading federation rules failed; retrying on the next change")
            if not self._again:
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
