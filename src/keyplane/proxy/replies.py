"""What the proxy answers itself, and how it passes the upstream's answers on (proxy/handler.py's helpers).

Errors and keyplane's own JSON answers in OpenAI's shape, with the request ids and ``openai-processing-ms``
every answer carries; the upstream's headers filtered (hop-by-hop, the provider account's own rate limits,
organization and project); the upstream's credential redacted wherever an upstream echoes it; an error
not in OpenAI's shape put in it.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from keyplane import errors, keys
from keyplane.proxy.context import RequestContext
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

if TYPE_CHECKING:
    from keyplane.proxy.forward import Outcome

# Upstream response headers not passed on: hop-by-hop, recomputed here, or about the provider
# account rather than the client's key (its rate limits, organization, project).
DROP_RESPONSE: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"content-encoding",
        b"date",
        b"server",
        b"x-request-id",
        b"openai-processing-ms",
        b"openai-organization",
        b"openai-project",
        b"set-cookie",
        b"alt-svc",
        b"strict-transport-security",
        b"via",
    }
)
DROP_WITH_CT: Final = DROP_RESPONSE | {b"content-type"}
JSON_CT: Final = (b"content-type", b"application/json")


# req_ + 16 random hex digits per process + a 16-digit counter: unique across a fleet, one format
# operation per request instead of reading the OS's random source.
_RID_PREFIX: Final = b"req_" + os.urandom(8).hex().encode()
_rid_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> bytes:
    return b"%s%016x" % (_RID_PREFIX, next(_rid_counter))


def _own_headers(body: bytes, rid: bytes, t0: float) -> list[tuple[bytes, bytes]]:
    """The headers of an answer keyplane writes itself: JSON, its length, the request ids, the time taken."""
    return [
        JSON_CT,
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", rid),
        (b"x-keyplane-request-id", rid),
        (b"openai-processing-ms", b"%d" % int((time.perf_counter() - t0) * 1000)),
    ]


async def send_error(
    send: Any, err: errors.APIError, rid: bytes, t0: float, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = err.body()
    h = _own_headers(body, rid, t0)
    h.extend((k.encode(), v.encode()) for k, v in err.headers.items())
    if extra:
        h.extend(extra)
    await send({"type": "http.response.start", "status": err.status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Any, obj: Any, rid: bytes, t0: float) -> None:
    body = orjson.dumps(obj)
    await send({"type": "http.response.start", "status": 200, "headers": _own_headers(body, rid, t0)})
    await send({"type": "http.response.body", "body": body})


def response_headers(
    out: Outcome, ctx: RequestContext, t0: float, length: int | None, json_ct: bool = False
) -> list[tuple[bytes, bytes]]:
    rid = None
    h: list[tuple[bytes, bytes]] = [JSON_CT] if json_ct else []
    drop = DROP_WITH_CT if json_ct else DROP_RESPONSE
    secret = out.dep.api_key
    raw = _secret_bytes(secret)  # once per answer, not per header
    for k, v in out.resp.headers:
        if k == b"x-request-id":
            rid = v
        elif k not in drop and not k.startswith(b"x-ratelimit-"):
            h.append((k, v if raw is None or raw not in v else redact(v, secret)))
    own = ctx.request_id.encode()
    if rid:
        ctx.upstream_request_id = rid.decode("latin-1")
    h.append((b"x-request-id", rid or own))
    h.append((b"x-keyplane-request-id", own))
    h.append((b"openai-processing-ms", b"%d" % int((time.perf_counter() - t0) * 1000)))
    if length is not None:
        h.append((b"content-length", b"%d" % length))
    if ctx.extra_headers:
        h.extend(ctx.extra_headers)
    return h


def key_info(rt: Runtime, entry: KeyEntry) -> dict[str, Any]:
    snap = rt.snapshot
    p = snap.projects.get(entry.project_id) if entry.project_id else None
    perms = entry.permissions
    return {
        "object": "keyplane.key",
        "id": entry.id,
        "name": entry.name,
        "kind": entry.kind,
        "redacted_value": entry.redacted_value,
        "status": entry.status(rt.clock.now()),
        "expires_at": entry.expires_at,
        "organization": {"id": snap.org_id, "name": snap.org_name},
        "project": {"id": p.id, "name": p.name, "status": p.status} if p else None,
        "permissions": perms.to_json(),
        "scopes": sorted(perms.scopes),
    }


def _secret_bytes(secret: str) -> bytes | None:
    """The upstream's credential as an answer would carry it, or None when it is too short to be told apart."""
    return secret.encode("latin-1", "replace") if secret and len(secret) >= 8 else None


def redact(data: bytes, secret: str) -> bytes:
    """The upstream's own credential never reaches a client, even when an upstream echoes it."""
    raw = _secret_bytes(secret)
    if raw is not None and raw in data:
        return data.replace(raw, keys.mask(secret).encode("latin-1", "replace"))
    return data


def is_openai_error(payload: bytes) -> bool:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict)


def wrap_error(name: str, status: int, payload: bytes) -> bytes:
    """An upstream error that is not in OpenAI's shape, put in it (with the start of what it said)."""
    snippet = payload[:200].decode("utf-8", "replace").strip()
    err = errors.APIError(
        status,
        f"The upstream `{name}` answered HTTP {status}" + (f": {snippet}" if snippet else "."),
        type="server_error" if status >= 500 else "invalid_request_error",
        code="upstream_error",
    )
    return err.body()
