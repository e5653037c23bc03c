"""What an alert is and what a sink must do: the :class:`Alert` a feature sends, the :class:`Sink`
protocol every channel implements, the :class:`DeliveryError` a failed delivery raises, and which sinks
take which events (their ``events`` glob patterns).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from keyplane import ids


@dataclass(frozen=True, slots=True)
class Alert:
    event: str  # e.g. guard.fired, guard.resolved, guard.test, spend.threshold
    summary: str  # one line, for humans
    details: dict[str, Any] = field(default_factory=dict)  # event fields, merged into the webhook body
    severity: str = "critical"  # critical | error | warning | info
    dedup_key: str | None = None  # PagerDuty incident key (trigger and resolve share it)
    resolve: bool = False  # a resolution of dedup_key, not a new alert
    id: str = field(default_factory=lambda: ids.new_id("alert_"))
    created_at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "object": "keyplane.alert",
            "id": self.id,
            "event": self.event,
            "created_at": int(self.created_at),
            "severity": self.severity,
            "summary": self.summary,
        }
        d.update(self.details)
        return d


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    type: str
    name: str
    events: list[str]

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None: ...


def _accepts(sink: Sink, alert: Alert) -> bool:
    return not sink.events or any(fnmatch.fnmatchcase(alert.event, p) for p in sink.events)
