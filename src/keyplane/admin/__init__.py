"""The admin API app: one table of routes drives the router and the OpenAPI document."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyplane import domain, errors
from keyplane.admin import key_routes as k
from keyplane.admin import routes as r
from keyplane.admin.common import JSONResponse
from keyplane.degrade import Outage, store_outage
from keyplane.runtime import Runtime

log = logging.getLogger("keyplane.admin")

P = "/v1/organization"


@dataclass(frozen=True)
class Endpoint:
    path: str
    method: str
    handler: Any
    summary: str
    extension: bool = False


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(f"{P}/projects", "GET", r.list_projects, "List projects"),
    Endpoint(f"{P}/projects", "POST", r.create_project, "Create a project"),
    Endpoint(f"{P}/projects/{{project_id}}", "GET", r.get_project, "Retrieve a project"),
    Endpoint(f"{P}/projects/{{project_id}}", "POST", r.update_project, "Modify a project"),
    Endpoint(f"{P}/projects/{{project_id}}/archive", "POST", r.archive_project, "Archive a project"),
    Endpoint(f"{P}/projects/{{project_id}}/api_keys", "GET", k.list_project_keys, "List project API keys"),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys",
        "POST",
        k.create_project_key,
        "Create a user API key in a project (value shown once)",
        True,
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}", "GET", k.get_project_key, "Retrieve a project API key"
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}",
        "POST",
        k.update_project_key,
        "Update a key's name or permissions (no new key issued)",
        True,
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}",
        "DELETE",
        k.delete_project_key,
        "Delete (revoke) a project API key",
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}/rotate",
        "POST",
        k.rotate_project_key,
        "Rotate a key: new value once, old one revoked now or after grace_period_seconds",
        True,
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}/suspend",
        "POST",
        k.suspend_key,
        "Suspend a key (reversible)",
        True,
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/api_keys/{{key_id}}/resume", "POST", k.resume_key, "Resume a suspended key", True
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/service_accounts", "GET", r.list_service_accounts, "List project service accounts"
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/service_accounts",
        "POST",
        r.create_service_account,
        "Create a service account (its key value shown once)",
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/service_accounts/{{service_account_id}}",
        "GET",
        r.get_service_account,
        "Retrieve a service account",
    ),
    Endpoint(
        f"{P}/projects/{{project_id}}/service_accounts/{{service_account_id}}",
        "DELETE",
        r.delete_service_account,
        "Delete a service account (its keys are revoked)",
    ),
    Endpoint(f"{P}/users", "GET", r.list_users, "List users"),
    Endpoint(f"{P}/users", "POST", r.add_user, "Add a user", True),
    Endpoint(f"{P}/users/{{user_id}}", "GET", r.get_user, "Retrieve a user"),
    Endpoint(f"{P}/users/{{user_id}}", "POST", r.update_user, "Modify a user's role"),
    Endpoint(f"{P}/users/{{user_id}}", "DELETE", r.delete_user, "Remove a user (their user keys are revoked)"),
    Endpoint(f"{P}/admin_api_keys", "GET", k.list_admin_keys, "List admin API keys"),
    Endpoint(f"{P}/admin_api_keys", "POST", k.create_admin_key, "Create an admin API key (value shown once)"),
    Endpoint(f"{P}/admin_api_keys/{{key_id}}", "GET", k.get_admin_key, "Retrieve an admin API key"),
    Endpoint(f"{P}/admin_api_keys/{{key_id}}", "DELETE", k.delete_admin_key, "Delete an admin API key"),
    Endpoint(
        f"{P}/api_keys/lookup",
        "POST",
        k.lookup_keys,
        "Look keys up by SHA-256 of their value (for leak scanners; the key itself is never sent)",
        True,
    ),
    Endpoint(f"{P}/api_keys/{{key_id}}/revoke", "POST", k.revoke_any_key, "Revoke any key by id, with a reason", True),
    Endpoint(f"{P}/audit_logs", "GET", r.list_audit_logs, "List audit logs"),
    Endpoint(
        f"{P}/provider_objects",
        "POST",
        r.assign_provider_object,
        "Assign a provider object made outside keyplane (a stored prompt, a fine-tuned model...) to a project",
        True,
    ),
)


def openapi_document(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for e in endpoints:
        params = [
            {"name": n.split("}")[0], "in": "path", "required": True, "schema": {"type": "string"}}
            for n in e.path.split("{")[1:]
        ]
        paths.setdefault(e.path, {})[e.method.lower()] = {
            "summary": e.summary,
            "operationId": e.handler.__name__,
            "parameters": params,
            "tags": ["keyplane extension" if e.extension else "OpenAI Admin API"],
            "security": [{"adminKey": []}],
            "responses": {
                "200": {"description": "OK"},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keyplane admin API",
            "version": "1",
            "description": "OpenAI Admin API shapes under /v1/organization, plus keyplane extensions.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                }
            },
        },
    }


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.APIError)
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)


async def _domain_error(request: Request, exc: Exception) -> Response:
    """A refusal of the domain (keyplane.domain): the OpenAI error body of its kind, as any APIError."""
    assert isinstance(exc, domain.DomainError)
    return await _api_error(request, domain.api_error(exc))


# One line when a store the admin API needs goes down, one when it is back: never a traceback per call.
_outages = {
    "database": Outage("the SQL store", "admin API (answering 503)", log),
    "redis": Outage("Redis", "admin API (answering 503)", log),
}


def store_recovered() -> None:
    """Called after an admin call that went through: the stores answered again."""
    for o in _outages.values():
        if o.down:
            o.ok()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = errors.method_not_allowed(request.method, request.url.path)
    elif exc.status_code == 404:
        err = errors.unknown_url(request.method, request.url.path)
    else:
        err = errors.APIError(exc.status_code, str(exc.detail))
    return Response(err.body(), status_code=err.status, media_type="application/json")


async def _unexpected(request: Request, exc: Exception) -> Response:
    store = store_outage(exc)
    if store is not None:  # an outage, not a bug: 503 (retryable), logged once per change of state
        _outages[store].failed(exc)
        err = errors.store_unavailable(store)
    else:
        rid = request.scope.get("state", {}).get("request_id", "")
        log.error(
            "admin API error on %s %s (%s): %s", request.method, request.url.path, rid, type(exc).__name__, exc_info=exc
        )
        err = errors.internal_error()
    return Response(err.body(), status_code=err.status, media_type="application/json", headers=err.headers)


def build_admin_app(rt: Runtime, extra: list[Endpoint] | None = None) -> Starlette:
    """The admin app; features add their endpoints through ``extra`` (app.Feature.endpoints)."""
    endpoints = (*ENDPOINTS, *(extra or []))
    doc = openapi_document(endpoints)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(doc)

    routes = [Route(e.path, e.handler, methods=[e.method]) for e in endpoints]
    routes.append(Route(f"{P}/openapi.json", openapi, methods=["GET"]))
    app = Starlette(
        routes=routes,
        exception_handlers={
            errors.APIError: _api_error,
            domain.DomainError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.runtime = rt
    return app
