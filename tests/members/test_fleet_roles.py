"""Two instances, one PostgreSQL and one Redis: taking a custom role or a group membership away on one is
enforced by the other within a second, through the bus (the revision poll is slowed to 30 s so it cannot be
what carries the change)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from keyplane import control
from tests.support import Gateways, RunningServer, postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pair(gateways: Gateways) -> Iterator[tuple[RunningServer, RunningServer]]:
    with postgres_database() as url:
        env = {
            "KEYPLANE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "KEYPLANE_REDIS_PREFIX": f"kpt{secrets.token_hex(4)}",
            "KEYPLANE_SNAPSHOT_POLL_SECONDS": "30",
        }
        a = gateways.start(store=url, **env)
        b = gateways.start(store=url, **env)  # A's org and secret key: a fleet
        try:
            yield a, b
        finally:
            gateways.stop_all()  # before the database is dropped


def _client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, admin_api_key=key, api_key="unused", max_retries=0)


def _until(check, what: str, within: float = 1.0) -> None:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, f"{what} did not reach the other instance within {within} s"
        time.sleep(0.02)


def _known(org) -> bool:
    try:
        return bool(org.projects.list().data)
    except openai.AuthenticationError:
        return False


def _can_write(org) -> bool:
    try:
        org.projects.create(name="probe")
        return True
    except openai.PermissionDeniedError as e:
        assert e.code == "insufficient_permissions"
        return False


def test_a_removal_reaches_the_other_instance_within_a_second(pair):
    a, b = pair
    admin = _client(a, a.admin_key).admin.organization
    user = httpx.post(
        a.v1 + "/organization/users",
        headers={"Authorization": f"Bearer {a.admin_key}"},
        json={"email": "fleet@example.com", "role": "reader"},
    ).json()

    async def make_key() -> str:
        async with a.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s, control.CLI_ACTOR, a.settings.secret_key, "fleet", owner_user_id=user["id"]
            )
            return value

    on_b = _client(b, a.call(make_key())).admin.organization
    _until(lambda: _known(on_b), "the new admin key")
    assert not _can_write(on_b)
    writer = admin.roles.create(role_name="writer", permissions=["api.project.write"])
    group = admin.groups.create(name="team")
    admin.groups.roles.create(group.id, role_id=writer.id)
    admin.groups.users.create(group.id, user_id=user["id"])
    _until(lambda: _can_write(on_b), "a group membership")
    admin.groups.users.delete(user["id"], group_id=group.id)
    _until(lambda: not _can_write(on_b), "removing the user from the group")
    admin.users.roles.create(user["id"], role_id=writer.id)
    _until(lambda: _can_write(on_b), "a direct role assignment")
    admin.roles.delete(writer.id)
    _until(lambda: not _can_write(on_b), "deleting an assigned role")
