"""What travels on the invalidation bus: :class:`Event` and its key/project deltas, and their JSON wire form."""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

log = logging.getLogger("keyplane.bus")


class KeyDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A key's status after the change: a receiver applies it as is."""

    id: str
    revoked_at: int | None = None
    revoke_reason: str | None = None
    suspended_at: int | None = None
    suspend_reason: str | None = None


class ProjectDelta(msgspec.Struct, frozen=True):
    id: str
    status: str


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """``(revision, what changed)``. ``first`` is the first revision the change covers (a
    transaction may bump the revision more than once); heartbeats carry only ``revision``."""

    revision: int
    kind: Literal["change", "heartbeat"] = "change"
    first: int = 0
    keys: tuple[KeyDelta, ...] = ()
    projects: tuple[ProjectDelta, ...] = ()
    complete: bool = False  # every change of the transaction is in keys/projects: no reload needed
    origin: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(ev: Event) -> bytes:
    return _encoder.encode(ev)


def decode(data: bytes | str) -> Event | None:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        log.warning("bus: ignored a malformed event")
        return None
