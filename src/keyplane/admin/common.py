"""Admin API plumbing: admin-key authentication, JSON bodies, list responses, error mapping."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from keyplane import errors, keys
from keyplane.control import Actor
from keyplane.runtime import Runtime
from keyplane.snapshot import KeyEntry

MAX_ADMIN_BODY = 1024 * 1024


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise errors.missing_key()
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise errors.missing_key("The Authorization header must be `Bearer YOUR_ADMIN_KEY`.")
    return value.strip()


def authenticate_admin(request: Request) -> tuple[KeyEntry, Actor]:
    """The admin key of the request, or an OpenAI-shaped 401."""
    internal = request.scope.get("keyplane.session")
    if internal is not None:  # an in-process call from the dashboard (web/features.py), never from the network
        return internal  # type: ignore[no-any-return]
    rt = runtime(request)
    value = bearer(request)
    kind = keys.parse(value)
    if kind is None:
        hint = ""
        if keys.looks_like_keyplane_key(value):
            hint = "The key is malformed (its checksum does not match): check that it was copied whole."
        elif "T3BlbkFJ" in value or value.startswith(("sk-admin-", "sk-proj-")):
            hint = ("This looks like an OpenAI key; the keyplane admin API takes a keyplane admin key "
                    "(sk-kp-admin-...).")
        raise errors.invalid_key(keys.mask(value), hint)
    if kind != "admin":
        raise errors.admin_key_required(
            f"Incorrect API key provided: {keys.mask(value)}. The admin API needs an admin key (sk-kp-admin-...); "
            "project and service-account keys work only on the /v1 model endpoints."
        )
    entry = rt.snapshot.keys.get(keys.digest(rt.settings.secret_key, value))
    if entry is None:
        raise errors.invalid_key(keys.mask(value))
    why = entry.inactive_reason(rt.clock.now())
    if why:
        raise errors.key_inactive(keys.mask(value), why)
    rt.last_used.touch(entry.id, rt.clock.now())
    actor = Actor("api_key", entry.id, {"id": entry.id, "type": "user",
                                         "user": {"id": entry.owner_user_id}})
    return entry, actor


async def json_body(request: Request, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_ADMIN_BODY:
        raise errors.too_large(MAX_ADMIN_BODY)
    if not raw.strip():
        if required:
            raise errors.bad_request("The request body must be a JSON object.", code="invalid_body")
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.invalid_json() from None
    if not isinstance(data, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_body")
    return data


def list_response(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list", "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def query_list(request: Request, name: str) -> list[str]:
    """Array params as the SDKs send them (name[]=a&name[]=b), also name=a,b."""
    values = request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)
    out: list[str] = []
    for v in values:
        out.extend(x for x in v.split(",") if x)
    return out
