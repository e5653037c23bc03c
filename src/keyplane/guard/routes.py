"""Admin API of the kill switch (keyplane extension), under /v1/organization/guard.

GET/POST          /guard/rules            list the effective rules / create one
GET/POST/DELETE   /guard/rules/{name}     read / change (fields merged) / delete one
GET               /guard/events           what the rules did, newest first (after, limit, key_id,
                                          rule, project_id)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from starlette.requests import Request

from keyplane import control
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, list_response, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import bad_request, not_found
from keyplane.guard import store
from keyplane.guard.models import GuardEvent
from keyplane.guard.rules import Rule, effective

if TYPE_CHECKING:
    from keyplane.guard.engine import Guard

P = "/v1/organization/guard"


def _guard(request: Request) -> Guard:
    guard = runtime(request).features.guard
    if guard is None:  # these endpoints are mounted by the guard feature's start
        raise RuntimeError("the guard feature is not running")
    return guard


def event_json(e: GuardEvent) -> dict[str, Any]:
    return {
        "object": "guard.event",
        "id": e.id,
        "created_at": e.created_at,
        "rule": e.rule,
        "kind": e.kind,
        "scope": e.scope,
        "key_id": e.key_id,
        "project_id": e.project_id,
        "mode": e.mode,
        "action": e.action,
        "dry_run": e.dry_run,
        "figures": orjson.loads(e.figures),
        "message": e.message,
        "resolved_at": e.resolved_at,
    }


async def _effective(request: Request) -> tuple[dict[str, Rule], dict[str, int]]:
    async with runtime(request).read() as s:
        stored, times = await store.load_stored(s)
    return effective(_guard(request).base_rules, stored), times


async def _after_change(request: Request) -> None:
    guard = _guard(request)
    await guard.reload_rules()
    await guard.publish()


def _now(request: Request) -> int:
    return int(runtime(request).clock.now())


async def list_rules(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    rules, times = await _effective(request)
    names = list(rules)
    after = q.get("after")
    if after:
        if after not in rules:
            raise bad_request(f"No guard rule named '{after}' to page from.", param="after")
        names = names[names.index(after) + 1 :]
    page = names[:limit]
    return JSONResponse(list_response([rules[n].to_json(times.get(n)) for n in page], len(names) > limit))


async def create_rule(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    async with runtime(request).write() as s:
        rule = await store.create_rule(s, actor, _guard(request).base_rules, body, _now(request))
    await _after_change(request)
    return JSONResponse(rule.to_json(_now(request)))


async def get_rule(request: Request) -> JSONResponse:
    authenticate_admin(request)
    name = request.path_params["name"]
    rules, times = await _effective(request)
    if name not in rules:
        raise not_found(f"No guard rule named '{name}'.", param="name")
    return JSONResponse(rules[name].to_json(times.get(name)))


async def update_rule(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    body = await json_body(request)
    name = request.path_params["name"]
    async with runtime(request).write() as s:
        rule = await store.update_rule(s, actor, _guard(request).base_rules, name, body, _now(request))
    await _after_change(request)
    return JSONResponse(rule.to_json(_now(request)))


async def delete_rule(request: Request) -> JSONResponse:
    _, actor = authenticate_admin(request)
    name = request.path_params["name"]
    async with runtime(request).write() as s:
        await store.delete_rule(s, actor, _guard(request).base_rules, name, _now(request))
    await _after_change(request)
    return JSONResponse({"object": "guard.rule.deleted", "id": name, "deleted": True})


async def list_events(request: Request) -> JSONResponse:
    authenticate_admin(request)
    q = request.query_params
    limit = query_limit(request, 20, 100)
    stmt = select(GuardEvent)
    for param, col in (("key_id", GuardEvent.key_id), ("rule", GuardEvent.rule), ("project_id", GuardEvent.project_id)):
        if q.get(param):
            stmt = stmt.where(col == q[param])
    async with runtime(request).read() as s:
        rows, more = await control.page(s, GuardEvent, stmt, after=q.get("after"), limit=limit, descending=True)
    return JSONResponse(list_response([event_json(e) for e in rows], more))


ENDPOINTS: list[Endpoint] = [
    Endpoint(f"{P}/rules", "GET", list_rules, "List the kill switch's rules", True),
    Endpoint(f"{P}/rules", "POST", create_rule, "Create a kill switch rule", True),
    Endpoint(f"{P}/rules/{{name}}", "GET", get_rule, "Retrieve a kill switch rule", True),
    Endpoint(f"{P}/rules/{{name}}", "POST", update_rule, "Change a kill switch rule (fields given are merged)", True),
    Endpoint(f"{P}/rules/{{name}}", "DELETE", delete_rule, "Delete a kill switch rule", True),
    Endpoint(f"{P}/events", "GET", list_events, "List what the kill switch's rules did, newest first", True),
]
