"""Admin API of the provider connector (keyplane extension), under /v1/organization/providers.

GET   /providers                               the configured providers and their last background sync
POST  /providers/keys/match                    {"suffixes": ["WXYZ", ...]}: mirrored provider keys whose
                                               redacted value ends with one of them (for `scan --verify`)
POST  /providers/{name}/projects/{project_id}/api_keys/{key_id}/revoke   {"reason"}: delete the key at the
                                               provider (Admin API), mark it removed, audit it
GET   /providers/events                        what the provider rules did, newest first
GET   /providers/{name}/report                 the inventory summary and the hygiene report (?unused_days=30)
GET   /providers/bindings                      keyplane projects bound to provider projects
POST  /providers/bindings                      {"project_id", "provider_project_id", "provider"}: bind
POST  /providers/bindings/{project_id}/rotate  {"grace_seconds"}: a new service account key, then the old retired
DELETE /providers/bindings/{project_id}        unbind (the service account is deleted at the provider)
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from starlette.requests import Request

from keyplane import control
from keyplane.admin import Endpoint
from keyplane.admin.common import JSONResponse, authenticate_admin, json_body, require_in_project, runtime
from keyplane.admin.params import query_limit
from keyplane.errors import APIError, bad_request, not_found, upstream_error
from keyplane.lists import list_response
from keyplane.providers import service, sync
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.match import SUFFIX_LEN
from keyplane.snapshot import KeyEntry

P = "/v1/organization/providers"
MAX_SUFFIXES = 1000


async def match_keys(request: Request) -> JSONResponse:
    authenticate_admin(request)
    body = await json_body(request)
    suffixes = body.get("suffixes")
    if (
        not isinstance(suffixes, list)
        or len(suffixes) > MAX_SUFFIXES
        or not all(isinstance(x, str) and len(x) == SUFFIX_LEN for x in suffixes)
    ):
        raise bad_request(
            f"'suffixes' must be a list of at most {MAX_SUFFIXES} strings of {SUFFIX_LEN} characters.",
            param="suffixes",
            code="invalid_value",
        )
    wanted = set(suffixes)
    async with runtime(request).read() as s:
        rows = await sync.live_api_keys(s)
        items = []
        for r in rows:
            data = orjson.loads(r.data)
            red = data.get("redacted_value")
            if isinstance(red, str) and red[-SUFFIX_LEN:] in wanted:
                items.append(
                    {
                        "object": "provider.api_key",
                        "id": r.object_id,
                        "provider": r.provider,
                        "project_id": r.project_id,
                        "redacted_value": red,
                        "name": data.get("name"),
                        "last_used_at": data.get("last_used_at"),
                    }
                )
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
        row = await sync.mirrored_key(s, name, pid, kid)
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
        obj = await sync.object_at(s, row.seq)
        if obj is not None and obj.removed_at is None:
            obj.removed_at = now
        await control.audit(
            s,
            actor,
            "provider.api_key.deleted",
            {"provider": name, "project_id": pid, "id": kid, "reason": reason},
            resource_id=kid,
            at=now,
        )
    return JSONResponse(
        {"object": "provider.api_key.deleted", "id": kid, "provider": name, "project_id": pid, "deleted": True}
    )


def _box(request: Request) -> Any:
    from keyplane.providers.bindings import KeyBox

    return KeyBox(runtime(request).settings.secret_key)


async def _with_provider(request: Request, name: str | None, fn: Any) -> Any:
    """Run ``fn(connector)`` against the named provider (or the only one); errors in the admin API's shapes."""
    from keyplane.providers.bindings import BindingError

    rt = runtime(request)
    providers = rt.settings.file.providers
    if name is None and len(providers) == 1:
        name = providers[0].name
    cfg = next((p for p in providers if p.name == name), None)
    if cfg is None:
        raise bad_request(
            "Name the provider ('provider'): one of [[providers]]." if name is None else f"No provider named '{name}'.",
            param="provider",
            code="invalid_value",
        )
    try:
        conn = Connector(cfg)
    except ProviderError as e:
        raise upstream_error(str(e)) from None
    try:
        return await fn(conn)
    except BindingError as e:
        if e.status == 404:
            raise not_found(str(e), param=e.param) from None
        if e.status == 409:
            raise APIError(409, str(e), param=e.param, code="conflict") from None
        raise bad_request(str(e), param=e.param, code="invalid_value") from None
    except ProviderError as e:
        raise upstream_error(str(e)) from None
    finally:
        await conn.close()


async def _reload_keys(request: Request) -> None:
    keys = runtime(request).features.providers_keys
    if keys is not None:
        async with runtime(request).read() as s:
            await keys.reload(s)


async def list_bindings_(request: Request) -> JSONResponse:
    from keyplane.providers.bindings import list_bindings

    authenticate_admin(request)
    async with runtime(request).read() as s:
        return JSONResponse(list_response(await list_bindings(s), False))


async def create_binding(request: Request) -> JSONResponse:
    from keyplane.providers.bindings import bind

    entry, actor = authenticate_admin(request)
    body = await json_body(request)
    project, target, name = body.get("project_id"), body.get("provider_project_id"), body.get("provider")
    for field, v in (("project_id", project), ("provider_project_id", target)):
        if not isinstance(v, str) or not v or len(v) > 128:
            raise bad_request(f"'{field}' must be a non-empty string.", param=field, code="invalid_value")
    if name is not None and not isinstance(name, str):
        raise bad_request("'provider' must be a string.", param="provider", code="invalid_value")
    rt = runtime(request)
    pid, ppid = str(project), str(target)
    from keyplane.providers.bindings import BindingError, _project

    async with rt.read() as s:
        with contextlib.suppress(BindingError):  # no such project, archived: bind() answers it
            _require_project(request, entry, (await _project(s, pid)).id)
    out = await _with_provider(
        request, name, lambda conn: bind(rt.sessions, conn, _box(request), pid, ppid, int(rt.clock.now()), actor)
    )
    await _reload_keys(request)
    return JSONResponse(out)


async def _binding_provider(request: Request, entry: KeyEntry, project_ref: str) -> str:
    """The provider of a project's binding, once the caller may change that project (:func:`_require_project`)."""
    from keyplane.providers.bindings import BindingError, _binding

    async with runtime(request).read() as s:
        try:
            b = await _binding(s, project_ref)
        except BindingError as e:
            raise not_found(str(e), param="project_id") from None
    _require_project(request, entry, b.project_id)
    return b.provider


def _require_project(request: Request, entry: KeyEntry, project_id: str) -> None:
    """Binding a project (or rotating or removing its binding) decides where its traffic goes and with which
    provider key: it takes what changing that project directly takes (api.project.write there, organization-wide
    or from a project role), not only the organization permission of the /providers calls."""
    require_in_project(request, entry, project_id, "POST", f"/v1/organization/projects/{project_id}")


async def rotate_binding(request: Request) -> JSONResponse:
    from keyplane.providers.bindings import DEFAULT_GRACE, MAX_GRACE, rotate

    entry, actor = authenticate_admin(request)
    body = await json_body(request, required=False)
    grace = body.get("grace_seconds", DEFAULT_GRACE)
    if not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE:
        raise bad_request(
            f"'grace_seconds' must be an integer from 0 to {MAX_GRACE}.", param="grace_seconds", code="invalid_value"
        )
    rt = runtime(request)
    ref = request.path_params["project_id"]
    provider = await _binding_provider(request, entry, ref)
    out = await _with_provider(
        request, provider, lambda conn: rotate(rt.sessions, conn, _box(request), ref, int(rt.clock.now()), actor, grace)
    )
    await _reload_keys(request)
    return JSONResponse(out)


async def delete_binding(request: Request) -> JSONResponse:
    from keyplane.providers.bindings import unbind

    entry, actor = authenticate_admin(request)
    rt = runtime(request)
    ref = request.path_params["project_id"]
    provider = await _binding_provider(request, entry, ref)
    out = await _with_provider(
        request, provider, lambda conn: unbind(rt.sessions, conn, ref, int(rt.clock.now()), actor)
    )
    await _reload_keys(request)
    return JSONResponse(out)


async def list_providers(request: Request) -> JSONResponse:
    authenticate_admin(request)
    return JSONResponse(list_response(service.providers(runtime(request)), False))


async def provider_report(request: Request) -> JSONResponse:
    authenticate_admin(request)
    name = request.path_params["name"]
    raw = request.query_params.get("unused_days") or "30"
    return JSONResponse(await service.provider_report(runtime(request), name, raw))


async def list_events(request: Request) -> JSONResponse:
    authenticate_admin(request)
    limit = query_limit(request, 20, 100)
    items, more = await service.events(runtime(request), after=request.query_params.get("after"), limit=limit)
    return JSONResponse(list_response(items, more))


ENDPOINTS: list[Endpoint] = [
    Endpoint(P, "GET", list_providers, "List the provider organizations keyplane governs", True),
    Endpoint(f"{P}/bindings", "GET", list_bindings_, "List the projects bound to provider projects", True),
    Endpoint(
        f"{P}/bindings",
        "POST",
        create_binding,
        "Bind a project to a provider project (keyplane's own service account there)",
        True,
    ),
    Endpoint(
        f"{P}/bindings/{{project_id}}/rotate",
        "POST",
        rotate_binding,
        "Rotate a bound project's provider key (new key first, old one retired after the grace)",
        True,
    ),
    Endpoint(
        f"{P}/bindings/{{project_id}}",
        "DELETE",
        delete_binding,
        "Unbind a project (its service account is deleted at the provider)",
        True,
    ),
    Endpoint(f"{P}/keys/match", "POST", match_keys, "Find mirrored provider keys by the last characters", True),
    Endpoint(f"{P}/events", "GET", list_events, "List what the provider rules did, newest first", True),
    Endpoint(
        f"{P}/{{name}}/report",
        "GET",
        provider_report,
        "The inventory summary and key hygiene report of a provider organization",
        True,
    ),
    Endpoint(
        f"{P}/{{name}}/projects/{{project_id}}/api_keys/{{key_id}}/revoke",
        "POST",
        revoke_key,
        "Delete a provider key through the provider's Admin API",
        True,
    ),
]
