"""Reservations of requests still running, renewed until they are settled.

A reservation lives ``reservation_ttl_seconds`` unless settled, and a request may run longer (a slow reasoning
call, a stream read slowly). The requests this process admitted and has not settled are
:attr:`Renewal.in_flight` (admission adds one, settle removes it); one periodic task (:meth:`Renewal.renew`,
every min(TTL / 3, 60 s)) extends all their reservations to now + TTL in one limiter call. While the process
lives a request's budget stays held until it is settled; when it dies the renewals stop and its reservations
lapse at their TTL, as before. A request whose task ended without a settle (a bug) is not renewed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from keyplane.limits import Limiter, Reservation
from keyplane.periodic import Periodic
from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.billing")

RENEW_MAX_SECONDS = 60.0  # reservations of running requests are renewed every min(TTL / 3, this)


class Renewal:
    """The reservations of this process's running requests, and the periodic task that renews them."""

    def __init__(self, rt: Runtime, limiter: Limiter, ttl_seconds: float) -> None:
        self.rt = rt
        self.limiter = limiter
        # Requests admitted and not settled yet (rid -> reservation): their reservations are renewed until settled.
        self.in_flight: dict[str, Reservation] = {}
        self.ttl_us = int(ttl_seconds * 1_000_000)
        self.renewed = 0  # reservations renewed (all renewals), for keyplane_reservation_renewals
        self._metric: Any = None  # that counter, once the metrics registry exists
        self._counted = 0  # renewals it has counted
        every = min(ttl_seconds / 3, RENEW_MAX_SECONDS)
        self.periodic = Periodic("reservation renewal", self.renew, every, cap=every)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def renew(self) -> int:
        """Extend the reservations of the requests still running in this process to now + reservation_ttl_seconds,
        in one limiter call (one Redis script); returns how many the limiter still held. A failure (Redis down)
        raises: the periodic task logs it and tries again at the next interval, the TTL still ahead."""
        live = self.in_flight
        ended = []
        for rid, res in live.items():
            task = res.extra.get("task")  # the request's task (billing/admission.py)
            if isinstance(task, asyncio.Task) and task.done():
                ended.append(rid)
        for rid in ended:  # its request ended without a settle (a bug): left to lapse at its TTL, as without renewal
            del live[rid]
        if ended:
            log.warning("%d reservations of requests that ended unsettled are no longer renewed", len(ended))
        if not live:
            return 0
        n = await self.limiter.renew(list(live.values()), self.ttl_us)
        self.renewed += n
        self._count()
        return n

    def _count(self) -> None:
        """keyplane_reservation_renewals on the metrics registry (the usage feature starts after billing)."""
        if self._metric is None:
            m = self.rt.features.usage_metrics
            if m is None:
                return
            from prometheus_client import Counter

            self._metric = Counter(
                "keyplane_reservation_renewals",
                "Reservations of running requests renewed (extended to now + reservation_ttl_seconds).",
                registry=m.registry,
            )
        self._metric.inc(self.renewed - self._counted)
        self._counted = self.renewed
