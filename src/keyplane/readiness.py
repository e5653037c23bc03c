"""Readiness: "can this instance serve traffic" apart from "can the control plane be changed".

``GET /readyz`` (the probe a load balancer or Kubernetes uses) answers 200 when the instance can serve
/v1: its snapshot of keys, limits and prices is loaded and fresh (within max_staleness_seconds), and the
shared limits store (Redis) answers when one is configured. The SQL store is not part of it: /v1 is
served from the snapshot and the usage journal while PostgreSQL is down, and pulling healthy instances
out of rotation during a database outage would turn it into a full outage.

``GET /readyz/control`` answers 200 when the control plane is writable: the SQL store answers a query
within database_timeout_seconds (the admin API, the dashboard and the CLI need it).

Both answer within their stores' timeouts and carry every check in the JSON body
(docs/operations.md "Degradation").
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import orjson

from keyplane.config import Settings
from keyplane.runtime import Runtime
from keyplane.store import db


class _Pingable(Protocol):
    async def ping(self) -> Any: ...


def _limits_client(rt: Runtime) -> _Pingable | None:
    """The Redis client of the limiter, when limits live in Redis."""
    billing = rt.features.billing
    client = billing.limiter.ping_client() if billing is not None else None
    return client if client is not None and hasattr(client, "ping") else None


async def serving_checks(rt: Runtime | None, s: Settings) -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    if rt is None or not rt.snapshot.loaded:
        return False, {"config": "not loaded"}
    ok = True
    checks["config"] = "ok"
    if s.max_staleness_seconds > 0 and not rt.snapshot.is_fresh(s.max_staleness_seconds):
        ok = False
        checks["freshness"] = f"stale for {rt.snapshot.staleness():.1f}s (bound {s.max_staleness_seconds:g}s)"
    else:
        checks["freshness"] = "ok"
    client = _limits_client(rt)
    if client is not None:
        try:
            await asyncio.wait_for(client.ping(), s.redis_timeout_seconds)
            checks["limits_store"] = "ok"
        except Exception as e:
            ok = False
            checks["limits_store"] = f"unreachable: {type(e).__name__}"
    else:
        checks["limits_store"] = "in-process" if not s.redis_url else "not started"
    return ok, checks


async def control_checks(rt: Runtime | None, s: Settings) -> tuple[bool, dict[str, str]]:
    if rt is None:
        return False, {"store": "not started"}
    try:

        async def ping() -> None:
            async with rt.engine.connect() as conn:
                await db.ping(conn)

        await asyncio.wait_for(ping(), s.database_timeout_seconds)
        return True, {"store": "ok"}
    except Exception as e:
        return False, {"store": f"unreachable: {type(e).__name__}"}


async def answer(rt: Runtime | None, s: Settings, send: Any, *, control: bool) -> None:
    from keyplane.app import send_json

    if control:
        ok, checks = await control_checks(rt, s)
        body = {"status": "ok" if ok else "unavailable", "control_plane_writable": ok, "checks": checks}
    else:
        ok, checks = await serving_checks(rt, s)
        body = {
            "status": "ok" if ok else "unavailable",
            "serving": ok,
            "checks": checks,
            "control_plane": "see /readyz/control",
        }
    await send_json(send, 200 if ok else 503, orjson.dumps(body), [(b"cache-control", b"no-store")])
