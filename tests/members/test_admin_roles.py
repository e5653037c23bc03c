"""Admin keys act with a role from the one permission table: a reader's admin key is refused every write."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI

from keyplane import control
from keyplane.members import permissions


def _client(server, key: str) -> OpenAI:
    return OpenAI(base_url=server.v1, admin_api_key=key, api_key="unused", max_retries=0)


def _refused(call) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        call()
    assert e.value.status_code == 403 and e.value.code == "insufficient_permissions"


def test_reader_admin_key_reads_but_never_writes(admin, http, server):
    r = http.post("/admin_api_keys", json={"name": "auditor", "role": "reader"})
    assert r.status_code == 200 and r.json()["permissions"] == "read_only"
    org = _client(server, r.json()["value"]).admin.organization
    pid = server.project_id
    assert [p.id for p in org.projects.list()] == [pid]
    assert org.users.list().data and org.audit_logs.list().data is not None
    assert list(org.projects.users.list(project_id=pid)) == []
    _refused(lambda: org.projects.create(name="nope"))
    _refused(lambda: org.projects.update(pid, name="nope"))
    _refused(lambda: org.projects.archive(pid))
    _refused(lambda: org.admin_api_keys.create(name="escalate"))
    _refused(lambda: org.invites.create(email="x@example.com", role="owner"))
    _refused(lambda: org.users.update(server.init["owner_user_id"], role="reader"))
    _refused(lambda: org.projects.service_accounts.create(project_id=pid, name="svc"))
    _refused(lambda: org.projects.api_keys.delete(server.init["api_key_id"], project_id=pid))
    _refused(lambda: org.admin_api_keys.delete(server.init["admin_key_id"]))
    # a lookup is a read, though it POSTs
    assert (
        _client(server, r.json()["value"]).post(
            "/organization/api_keys/lookup",
            body={"sha256": ["0" * 64]},
            cast_to=object,
            options={"headers": {"Authorization": f"Bearer {r.json()['value']}"}},
        )
        is not None
    )
    assert admin.admin.organization.projects.retrieve(pid).name == "Default project"  # nothing changed
    assert http.post("/admin_api_keys", json={"name": "x", "role": "emperor"}).status_code == 400


def test_demoted_owner_keeps_only_read(admin, http, server):
    boss = http.post("/users", json={"email": "boss@example.com", "role": "owner"}).json()

    async def make_key() -> str:
        async with server.app.runtime.write() as s:
            _, value = await control.create_admin_key(
                s, control.CLI_ACTOR, server.settings.secret_key, "boss key", owner_user_id=boss["id"]
            )
            return value

    org = _client(server, server.call(make_key())).admin.organization
    assert org.projects.create(name="while owner").name == "while owner"
    admin.admin.organization.users.update(boss["id"], role="reader")
    deadline = time.monotonic() + 5  # the snapshot reloads the key from the bus, in-process: at once
    while time.monotonic() < deadline:
        try:
            org.projects.list(limit=1)
            org.admin_api_keys.list(limit=1)
            org.projects.create(name="after demotion")
        except openai.PermissionDeniedError as e:
            assert e.code == "insufficient_permissions"
            break
        time.sleep(0.05)
    else:
        pytest.fail("a demoted owner's admin key could still write")
    assert [p.name for p in admin.admin.organization.projects.list()].count("after demotion") == 0
    assert org.projects.list().data


def test_one_table():
    assert permissions.required("GET", "/v1/organization/users") == "api.organization.read"
    assert permissions.required("DELETE", "/v1/organization/projects/p/users/u") == "api.project.write"
    assert permissions.required("POST", "/v1/organization/api_keys/lookup") == "api.organization.read"
    assert permissions.ROLES["reader"] <= permissions.ROLES["owner"] == set(permissions.PERMISSIONS)


def test_roles_list_is_the_table(admin):
    roles = {r.name: r for r in admin.admin.organization.roles.list()}
    assert set(roles) == {"owner", "reader"} and all(r.predefined_role for r in roles.values())
    assert roles["reader"].permissions == ["api.organization.read", "api.project.read"]
    assert set(roles["owner"].permissions) == set(permissions.PERMISSIONS)


def test_user_roles_are_the_organization_role(admin, http):
    dev = http.post("/users", json={"email": "dev@example.com", "role": "reader"}).json()
    roles = admin.admin.organization.users.roles
    assert [r.name for r in roles.list(dev["id"])] == ["reader"]
    assert roles.retrieve("role-reader", user_id=dev["id"]).permissions == ["api.organization.read", "api.project.read"]
    with pytest.raises(openai.NotFoundError):
        roles.retrieve("role-owner", user_id=dev["id"])
    with pytest.raises(openai.BadRequestError):
        roles.delete("role-reader", user_id=dev["id"])  # every user keeps at least reader
    made = roles.create(dev["id"], role_id="role-owner")
    assert made.object == "user.role" and made.role.name == "owner" and made.user.role == "owner"
    assert admin.admin.organization.users.retrieve(dev["id"]).role == "owner"
    with pytest.raises(openai.NotFoundError):
        roles.create(dev["id"], role_id="role-emperor")
    with pytest.raises(openai.NotFoundError):
        roles.delete("role-reader", user_id="user-missing")
    d = roles.delete("role-owner", user_id=dev["id"])
    assert d.deleted and d.object == "user.role.deleted"
    assert admin.admin.organization.users.retrieve(dev["id"]).role == "reader"
