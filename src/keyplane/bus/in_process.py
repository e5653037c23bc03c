"""The in-process bus: one node, events reach this process's subscribers only."""

from __future__ import annotations

from keyplane.bus.base import Subscribers
from keyplane.bus.events import Event


class InProcessBus(Subscribers):
    """One node: events reach the subscribers of this process only."""

    name = "in-process"

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    async def close(self) -> None:
        return None
