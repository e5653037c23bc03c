"""Admin API of the provider connector (keyplane extension), under /v1/organization/providers.

    GET   /providers                               the configured providers and their last background sync
    POST  /providers/keys/match                    {"suffixes": ["WXYZ", ...]}: mirrored provider keys whose
                                                   redacted value ends with one of them (for `scan --verify`)
    POST  /providers/{name}/projects/{project_id}/api_keys/{key_id}/revoke   {"reason"}: delete the key at the
                                                   provider (Admin API), mark it removed, audit it
    GET   /providers/events                        what the provider rules did, newest first
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select
from starlette.requests import Request

from keyplane import control
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, list_response, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import bad_request, not_found, upstream_error
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.match import SUFFIX_LEN
from keyplane.providers.models import ProviderEvent, ProviderObject

P = "/v1/organization/providers"
MAX_SUFFIXES = 1000


async def list_providers(request: Request) -> JSONResponse:
    authenticate_admin(request)
    rt = runtime(request)
    poller = rt.extras.get("providers")
    last = poller.last if poller is not None else {}
    items = [{"object": "provider", "id": p.name, "kind": p.kind, "base_url": p.base_url,
              "sync_interval": p.sync_interval,
              "last_sync": {k: v for k, v in last[p.name].items() if k != "events"} if p.name in last else None}
             for p in rt.settings.file.providers]
    return JSONResponse(list_response(items, False))


async def match_keys(request: Request) -> JSONResponse:
    authenticate_admin(request)
    body = await json_body(request)
    suffixes = body.get("suffixes")
    if (not isinstance(suffixes, list) or len(suffixes) > MAX_SUFFIXES
            or not all(isinstance(x, str) and len(x) == SUFFIX_LEN for x in suffixes)):
        raise bad_request(f"'suffixes' must be a list of at most {MAX_SUFFIXES} strings of {SUFFIX_LEN} characters.",
                          param="suffixes", code="invalid_value")
    wanted = set(suffixes)
    async with runtime(request).read() as s:
        rows = (await s.execute(select(ProviderObject).where(ProviderObject.kind == "api_key",
                                                             ProviderObject.removed_at.is_(None)))).scalars()
        items = []
        for r in rows:
            data = orjson.loads(r.data)
            red = data.get("redacted_value")
            if isinstance(red, str) and red[-SUFFIX_LEN:] in wanted:
                items.append({"object": "provider.api_key", "id": r.object_id, "provider": r.provider,
                              "project_id": r.project_id, "redacted_value": red, "name": data.get("name"),
                              "last_used_at": data.get("last_used_at")})
    return JSONResponse(list_response(items, False))


async def revoke_key(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    rt = runtime(request)
    name, pid, kid = (request.path_params[k] for k in ("name", "project_id", "key_id"))
    body = await json_body(request, required=False)
    reason = str(body.get("reason") or "")[:500]
    cfg = next((p for p in rt.settings.file.providers if p.name == name), None)
    if cfg is None:
        raise not_found(f"No provider named '{name}'.", param="name")
    async with rt.read() as s:
        row = (await s.execute(select(ProviderObject).where(
            ProviderObject.provider == name, ProviderObject.kind == "api_key", ProviderObject.object_id == kid,
            ProviderObject.project_id == pid))).scalar()
    if row is None:
        raise not_found(f"No mirrored key '{kid}' in provider project '{pid}'.", param="key_id")
    try:
        conn = Connector(cfg)
    except ProviderError as e:
        raise upstream_error(str(e)) from None
    try:
        await conn.delete_key(pid, kid)
    except ProviderError as e:
        if e.status != 404:
            raise upstream_error(str(e)) from None
    finally:
        await conn.close()
    now = int(rt.clock.now())
    async with rt.write() as s:
        obj = (await s.execute(select(ProviderObject).where(ProviderObject.seq == row.seq))).scalar()
        if obj is not None and obj.removed_at is None:
            obj.removed_at = now
        await control.audit(s, actor, "provider.api_key.deleted", {"provider": name, "project_id": pid, "id": kid,
                                                                   "reason": reason}, resource_id=kid, at=now)
    return JSONResponse({"object": "provider.api_key.deleted", "id": kid, "provider": name, "project_id": pid,
                         "deleted": True})


async def list_events(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    stmt = select(ProviderEvent)
    async with runtime(request).read() as s:
        rows, more = await control.page(s, ProviderEvent, stmt, after=request.query_params.get("after"), limit=limit,
                                        descending=True)
    return JSONResponse(list_response([event_json(e) for e in rows], more))


def event_json(e: ProviderEvent) -> dict[str, Any]:
    return {"object": "provider.event", "id": e.id, "created_at": e.created_at, "provider": e.provider,
            "rule": e.rule, "kind": e.kind, "scope": e.scope, "project_id": e.project_id, "key_id": e.key_id,
            "mode": e.mode, "action": e.action, "dry_run": e.dry_run, "figures": orjson.loads(e.figures),
            "message": e.message}


ENDPOINTS: list[Endpoint] = [
    Endpoint(P, "GET", list_providers, "List the provider organizations keyplane governs", True),
    Endpoint(f"{P}/keys/match", "POST", match_keys, "Find mirrored provider keys by the last characters", True),
    Endpoint(f"{P}/events", "GET", list_events, "List what the provider rules did, newest first", True),
    Endpoint(f"{P}/{{name}}/projects/{{project_id}}/api_keys/{{key_id}}/revoke", "POST", revoke_key,
             "Delete a provider key through the provider's Admin API", True),
]
