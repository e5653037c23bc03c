"""The invalidation bus: control-plane change events, in-process, Redis pub/sub or PostgreSQL NOTIFY.

Every control-plane write bumps ``meta.revision`` in its transaction (control.bump_revision, which
notes the new value on the session). Sessions made by :func:`.publish.publishing_sessionmaker`
collect what the transaction changed and, right after it commits, publish one :class:`.events.Event`:
the revision range it covers and, for key revocations, suspensions and resumes and project status
changes, the new status itself, so that a receiver applies it without reading SQL (snapshot.Snapshot.apply). An
event that carries everything its transaction changed is ``complete``; any other asks receivers to
reload. Instances that can read the store also publish ``heartbeat`` events with the revision they
read, which lets an instance cut off from SQL confirm it has missed nothing (docs/operations.md
"Partitions and revocation").

One bus is chosen at start (:func:`make_bus`): Redis when ``redis_url`` is set, PostgreSQL
LISTEN/NOTIFY on a PostgreSQL store without Redis, else in-process (one node; other processes on
that node poll). Polling the revision stays as the fallback in every case.

Modules: ``events`` (what travels on the bus and its wire form), ``base`` (the Bus interface),
``in_process``, ``redis_pubsub`` and ``pg_notify`` (one per implementation), ``publish`` (publishing
each committed transaction). This package chooses the bus an instance uses.
"""

from __future__ import annotations

from keyplane.bus.base import Bus
from keyplane.bus.in_process import InProcessBus
from keyplane.bus.pg_notify import PgNotifyBus
from keyplane.bus.redis_pubsub import RedisBus


def bus_kind(redis_url: str, database_url: str) -> str:
    if redis_url:
        return "redis"
    if database_url.startswith("postgresql"):
        return "postgres"
    return "in-process"


def make_bus(redis_url: str, redis_prefix: str, database_url: str) -> Bus:
    kind = bus_kind(redis_url, database_url)
    if kind == "redis":
        return RedisBus(redis_url, redis_prefix)
    if kind == "postgres":
        return PgNotifyBus(database_url)
    return InProcessBus()
