"""Invites through the official SDK, accepted through the one-time link (set a password, no e-mail)."""

from __future__ import annotations

import re

import httpx
import openai
import pytest


def _accept(server, url: str, password: str = "a long enough password", again: str | None = None) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=10) as c:
        page = c.get(url)
        if page.status_code != 200:
            return page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        return c.post(
            url, data={"csrf_token": csrf, "password": password, "password2": again or password, "name": "Newcomer"}
        )


def test_invite_lifecycle(admin, server):
    invites = admin.admin.organization.invites
    other = admin.admin.organization.projects.create(name="other")
    inv = invites.create(email="New@Example.com", role="reader", projects=[{"id": other.id, "role": "owner"}])
    assert inv.object == "organization.invite" and inv.status == "pending" and inv.email == "new@example.com"
    assert [(p.id, p.role) for p in inv.projects] == [(other.id, "owner")]
    url = inv.model_extra["accept_url"]
    assert url.startswith(server.base_url + "/invite/kpinv_")
    assert "accept_url" not in invites.retrieve(inv.id).model_dump()  # shown once
    assert [i.id for i in invites.list()] == [inv.id]
    with pytest.raises(openai.ConflictError):
        invites.create(email="new@example.com", role="reader")
    with pytest.raises(openai.BadRequestError):
        invites.create(email="x@example.com", role="emperor")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        invites.create(email="x@example.com", role="reader", projects=[{"id": "proj_missing", "role": "member"}])

    path = url[len(server.base_url) :]
    assert _accept(server, path, "short").status_code == 400
    assert _accept(server, path, again="another long password").status_code == 400
    done = _accept(server, path)
    assert done.status_code == 303 and done.headers["location"].startswith("/login")
    assert _accept(server, path).status_code == 404  # once only
    assert invites.retrieve(inv.id).status == "accepted"
    (user,) = [u for u in admin.admin.organization.users.list() if u.email == "new@example.com"]
    assert user.role == "reader" and user.name == "Newcomer"
    members = list(admin.admin.organization.projects.users.list(project_id=other.id))
    assert [(m.id, m.role) for m in members] == [(user.id, "owner")]
    assert list(admin.admin.organization.projects.users.list(project_id=server.project_id)) == []
    with pytest.raises(openai.BadRequestError):
        invites.delete(inv.id)  # accepted: remove the user instead
    with pytest.raises(openai.ConflictError):
        invites.create(email="new@example.com", role="reader")  # already a user
    types = [e.type for e in admin.admin.organization.audit_logs.list(resource_ids=[inv.id])]
    assert types == ["invite.accepted", "invite.sent"]


def test_deleted_invite_link_is_dead_and_default_project(admin, server):
    invites = admin.admin.organization.invites
    inv = invites.create(email="gone@example.com", role="owner")
    assert [p.id for p in inv.projects] == [server.project_id]  # no list: the default project
    d = invites.delete(inv.id)
    assert d.deleted and d.object == "organization.invite.deleted"
    with pytest.raises(openai.NotFoundError):
        invites.retrieve(inv.id)
    assert _accept(server, inv.model_extra["accept_url"][len(server.base_url) :]).status_code == 404
    assert _accept(server, "/invite/kpinv_forged").status_code == 404
    assert not [u for u in admin.admin.organization.users.list() if u.email == "gone@example.com"]
