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
