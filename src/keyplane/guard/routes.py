"""Admin API of the kill switch (keyplane extension), under /v1/organization/guard.

GET/POST          /guard/rules            list the effective rules / create one
GET/POST/DELETE   /guard/rules/{name}     read / change (fields merged) / delete one
GET               /guard/events           what the rules did, newest first (after, limit, key_id,
                                          rule, project_id)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import not_found
from keyplane.guard import service, store
from keyplane.guard.rules import Rule
from keyplane.lists import list_response

if TYPE_CHECKING:
    from keyplane.guard.engine import Guard

P = "/v1/organization/guard"


def _guard(request: Request) -> Guard:
    return service.guard_of(runtime(request))


async def _effective(request: Request) -> tuple[dict[str, Rule], dict[str, int]]:
    return await service.effective_rules(runtime(request))


async def _after_change(request: Request) -> None:
    guard = _guard(request)
    await guard.reload_rules()
    await guard.publish()


def _now(request: Request) -> int:
    return int(runtime(request).clock.now())


async def list_rules(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    items, more = await service.rules(runtime(request), after=request.query_params.get("after"), limit=limit)
    return JSONResponse(list_response(items, more))


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
    items, more = await service.events(
        runtime(request),
        after=q.get("after"),
        limit=limit,
        key_id=q.get("key_id"),
        rule=q.get("rule"),
        project_id=q.get("project_id"),
    )
    return JSONResponse(list_response(items, more))


ENDPOINTS: list[Endpoint] = [
    Endpoint(f"{P}/rules", "GET", list_rules, "List the kill switch's rules", True),
    Endpoint(f"{P}/rules", "POST", create_rule, "Create a kill switch rule", True),
    Endpoint(f"{P}/rules/{{name}}", "GET", get_rule, "Retrieve a kill switch rule", True),
    Endpoint(f"{P}/rules/{{name}}", "POST", update_rule, "Change a kill switch rule (fields given are merged)", True),
    Endpoint(f"{P}/rules/{{name}}", "DELETE", delete_rule, "Delete a kill switch rule", True),
    Endpoint(f"{P}/events", "GET", list_events, "List what the kill switch's rules did, newest first", True),
]
