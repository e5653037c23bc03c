"""The :class:`Bus` interface every implementation provides, and the subscriber fan-out they share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from keyplane.bus.events import Event

log = logging.getLogger("keyplane.bus")

Callback = Callable[[Event], None]


class Bus(Protocol):
    name: str

    async def start(self) -> None: ...

    async def publish(self, event: Event) -> None:
        """Send to every subscriber of every instance (this one included). Raises when it cannot."""
        ...

    def subscribe(self, callback: Callback) -> None:
        """``callback(event)`` runs on the event loop for every event received; it must not block."""
        ...

    async def close(self) -> None: ...


class Subscribers:
    def __init__(self) -> None:
        self._callbacks: list[Callback] = []

    def subscribe(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def deliver(self, ev: Event) -> None:
        for cb in self._callbacks:
            try:
                cb(ev)
            except Exception:
                log.exception("bus: a subscriber failed on revision %s", ev.revision)
