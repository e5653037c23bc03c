"""Helpers for tests that need a project member without going through the admin API."""

from __future__ import annotations

from typing import Any

from keyplane import control
from keyplane.members import ops


def make_member(server: Any, project_id: str, email: str, role: str = "member") -> None:
    """Add the user with ``email`` to the project, on the server's own loop and store."""

    async def go() -> None:
        async with server.app.runtime.write() as s:
            user = await control.find_user(s, email)
            await ops.add_project_user(s, control.CLI_ACTOR, project_id, role=role, user_id=user.id)

    server.call(go())


def user_with_key(
    server: Any, http: Any, email: str, role: str = "reader", key_role: str | None = None
) -> tuple[dict[str, Any], Any]:
    """A new organization user and the SDK's admin resource for an admin key of theirs."""
    from openai import OpenAI

    user = http.post("/users", json={"email": email, "role": role}).json()

    async def make_key() -> str:
        async with server.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s,
                control.CLI_ACTOR,
                server.settings.secret_key,
                f"{email} key",
                owner_user_id=user["id"],
                role=key_role,
            )
            return value

    key = server.call(make_key())
    return user, OpenAI(base_url=server.v1, admin_api_key=key, api_key="unused", max_retries=0).admin.organization
