"""``key.expiring`` notices: alert sinks are told 7, 3 and 1 days before a key expires.

Candidates come from the snapshot (no SQL scan); each (key, threshold) is claimed by inserting its row in
``access_expiry_notices`` in its own transaction before the alert is queued: in a fleet the one instance
whose insert commits sends it, the others hit the primary key and skip. A key first seen inside several
thresholds (created with 2 days to live) gets one notice, for the nearest, and the others are marked sent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keyplane import alerts
from keyplane.access.models import ExpiryNotice
from keyplane.periodic import Periodic

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.access.expiry")

THRESHOLDS_DAYS: Final = (7, 3, 1)
DAY: Final = 86_400
CHECK_SECONDS: Final = 60.0


class ExpiryNotifier:
    def __init__(self, rt: Runtime, interval: float = CHECK_SECONDS) -> None:
        self.rt = rt
        self._done: set[tuple[str, int]] = set()
        # A pass at start, then every interval; the store may be away: the next pass retries.
        self._periodic = Periodic("key-expiry-notices", self.check, interval, first_delay=0)

    async def check(self) -> int:
        """One pass; returns how many notices this instance sent."""
        now = self.rt.clock.now()
        due: dict[str, list[int]] = {}
        for k in list(self.rt.snapshot.keys_by_id.values()):
            if k.expires_at is None or k.revoked_at is not None or not now < k.expires_at <= now + 7 * DAY:
                continue
            crossed = [d for d in THRESHOLDS_DAYS if k.expires_at - now <= d * DAY and (k.id, d) not in self._done]
            if crossed:
                due[k.id] = crossed
        if not due:
            return 0
        async with self.rt.read() as s:
            rows = (
                await s.execute(
                    select(ExpiryNotice.key_id, ExpiryNotice.days).where(ExpiryNotice.key_id.in_(list(due)))
                )
            ).all()
        self._done.update((r.key_id, r.days) for r in rows)
        sent = 0
        for kid, crossed in due.items():
            todo = [d for d in crossed if (kid, d) not in self._done]
            if todo and await self._claim(kid, todo, int(now)):
                self._send(kid, min(todo), now)
                sent += 1
            self._done.update((kid, d) for d in todo)
        return sent

    async def _claim(self, kid: str, days: list[int], now: int) -> bool:
        try:
            async with self.rt.sessions() as s, s.begin():
                s.add_all([ExpiryNotice(key_id=kid, days=d, sent_at=now) for d in days])
        except IntegrityError:
            return False  # another instance claimed it
        return True

    def _send(self, kid: str, days: int, now: float) -> None:
        k = self.rt.snapshot.keys_by_id.get(kid)
        if k is None or k.expires_at is None:  # deleted, or its expiry cleared since the pass began
            return
        left = max(0, int(k.expires_at - now))
        alerts.for_runtime(self.rt).send(
            alerts.Alert(
                event="key.expiring",
                severity="warning",
                dedup_key=f"key.expiring:{kid}",
                summary=f"API key '{k.name}' ({k.redacted_value}) expires in {left // 3600} hours "
                f"(the {days}-day notice).",
                details={
                    "key": {
                        "id": k.id,
                        "name": k.name,
                        "kind": k.kind,
                        "redacted_value": k.redacted_value,
                        "project_id": k.project_id,
                        "expires_at": k.expires_at,
                    },
                    "threshold_days": days,
                    "expires_in_seconds": left,
                },
            )
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
