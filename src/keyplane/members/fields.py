"""The fields members' objects share: the names and descriptions of custom roles, groups and project roles
checked, a custom role's permissions read from its row, and the user behind an actor."""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.control import Actor
from keyplane.domain import Invalid
from keyplane.members.models import CustomRole

MAX_NAME = 128


def role_perms(r: CustomRole) -> list[str]:
    value = orjson.loads(r.permissions)
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def actor_user(actor: Actor) -> str | None:
    user = (actor.detail or {}).get("user")
    return user.get("id") if isinstance(user, dict) else None


def check_name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME:
        raise Invalid(
            f"'{param}' must be a non-empty string of at most {MAX_NAME} characters.", param=param, code="invalid_value"
        )
    return value.strip()


def check_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise Invalid(
            "'description' must be a string of at most 1000 characters.", param="description", code="invalid_value"
        )
    return value
