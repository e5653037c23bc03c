"""Delivery of alerts off the request path: the runtime's one :class:`Dispatcher` queues each alert for
every sink whose ``events`` match it, in background tasks retried with exponential backoff and jitter,
and counts the outcomes for the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from keyplane.alerts.config import AlertsSection
from keyplane.alerts.model import Alert, DeliveryError, Sink, _accepts
from keyplane.alerts.sinks import build_sinks
from keyplane.periodic import backoff

if TYPE_CHECKING:
    from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.alerts")

MAX_PENDING = 1000


Sleep = Callable[[float], Awaitable[None]]


class Dispatcher:
    """Delivers alerts to sinks in background tasks, with retries; never raises into the caller."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sinks = sinks
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._sleep = sleep
        self._rand = rand
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_error: dict[str, str] = {}

    @classmethod
    def from_config(cls, section: AlertsSection, env: Mapping[str, str] | None = None, **kw: Any) -> Dispatcher:
        return cls(
            build_sinks(section, os.environ if env is None else env),
            max_attempts=section.max_attempts,
            backoff=section.retry_backoff,
            backoff_max=section.retry_backoff_max,
            **kw,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._http

    def send(self, alert: Alert) -> int:
        """Queue ``alert`` for every sink that takes its event; returns how many deliveries were queued."""
        n = 0
        for sink in self.sinks:
            if not _accepts(sink, alert):
                continue
            if len(self._tasks) >= MAX_PENDING:
                self.counters[f"{sink.type}:dropped"] += 1
                log.error("alert %s to %s dropped: %d deliveries already pending", alert.id, sink.name, MAX_PENDING)
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(alert, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        return n

    async def deliver_now(self, alert: Alert) -> list[tuple[str, str, str | None]]:
        """Send to every sink and wait (the CLI's test-alert): [(sink name, delivered|failed, error)]."""
        results = []
        for sink in self.sinks:
            if not _accepts(sink, alert):
                continue
            ok = await self._deliver(alert, sink)
            results.append((sink.name, "delivered" if ok else "failed", None if ok else self.last_error.get(sink.name)))
        return results

    async def _deliver(self, alert: Alert, sink: Sink) -> bool:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await sink.send(alert, self._session())
            except DeliveryError as e:
                self.last_error[sink.name] = str(e)
                if not e.retry or attempt == self.max_attempts:
                    self.counters[f"{sink.type}:failed"] += 1
                    log.error(
                        "alert %s (%s) to %s sink %r failed after %d attempt(s): %s",
                        alert.id,
                        alert.event,
                        sink.type,
                        sink.name,
                        attempt,
                        e,
                    )
                    return False
                self.counters[f"{sink.type}:retried"] += 1
                # doubled per retry up to backoff_max (keyplane.periodic), plus up to 25% jitter
                delay = backoff(attempt - 1, self.backoff, self.backoff_max) * (1 + 0.25 * self._rand())
                log.warning(
                    "alert %s to %s sink %r failed (%s); retry %d in %.1fs",
                    alert.id,
                    sink.type,
                    sink.name,
                    e,
                    attempt,
                    delay,
                )
                await self._sleep(delay)
            except Exception:
                self.counters[f"{sink.type}:failed"] += 1
                log.exception("alert %s to %s sink %r: unexpected error", alert.id, sink.type, sink.name)
                return False
            else:
                self.counters[f"{sink.type}:delivered"] += 1
                return True
        return False

    async def drain(self) -> None:
        """Wait for the deliveries queued so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, grace: float = 5.0) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), grace)
        for t in list(self._tasks):
            t.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None


def for_runtime(rt: Runtime) -> Dispatcher:
    """The runtime's one dispatcher (created on first use; features share it). Stop it with :func:`close_runtime`."""
    d: Dispatcher | None = rt.features.alerts
    if d is None:
        d = Dispatcher.from_config(rt.settings.file.alerts)
        rt.features.alerts = d
    return d


async def close_runtime(rt: Runtime) -> None:
    d: Dispatcher | None = rt.features.alerts
    rt.features.alerts = None
    if d is not None:
        await d.aclose()
