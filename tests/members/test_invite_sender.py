"""A pending invite carries its sender's authority, no more: it cannot be accepted once the sender has left
the organization, or no longer holds what sending it took (the invite's organization role,
api.organization.write, and for each project it lists what adding a member there takes: api.project.write in
that project). Checked when it is sent, when the link is opened and again when it is submitted."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import openai
import pytest

from keyplane import control
from keyplane.members import invites
from tests.members.support import make_member, user_with_key

ORG_READ, ORG_WRITE = "api.organization.read", "api.organization.write"
PROJECT_READ, PROJECT_WRITE = "api.project.read", "api.project.write"


def _accept(server, url: str, meanwhile: Callable[[], None] | None = None) -> tuple[httpx.Response, httpx.Response]:
    """Open the link, run ``meanwhile`` (the sender loses their authority while the page is open), submit."""
    path = url[len(server.base_url) :] if url.startswith("http") else url
    with httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=10) as c:
        page = c.get(path)
        assert page.status_code == 200, page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        if meanwhile is not None:
            meanwhile()
        done = c.post(
            path, data={"csrf_token": csrf, "password": "a long enough password", "password2": "a long enough password"}
        )
        return done, c.get(path)


def _emails(admin) -> set[str]:
    return {u.email for u in admin.admin.organization.users.list()}


def test_an_owner_invite_dies_with_its_senders_owner_role(admin, http, server):
    org = admin.admin.organization
    boss, theirs = user_with_key(server, http, "boss@example.com", role="owner")
    people = org.roles.create(role_name="people", permissions=[ORG_READ, ORG_WRITE])
    org.users.roles.create(boss["id"], role_id=people.id)  # keeps api.organization.write when demoted
    owner_inv = theirs.invites.create(email="heir@example.com", role="owner", projects=[])
    reader_inv = theirs.invites.create(email="clerk@example.com", role="reader", projects=[])
    assert owner_inv.model_extra["created_by"] == boss["id"]

    done, again = _accept(
        server, owner_inv.model_extra["accept_url"], meanwhile=lambda: org.users.update(boss["id"], role="reader")
    )
    assert done.status_code == 403 and "no longer holds the authority to invite you as &#39;owner&#39;" in done.text
    assert "api.project.write" in done.text
    assert again.status_code == 403 and 'id="invite-error"' in again.text and "<form" not in again.text
    assert "heir@example.com" not in _emails(admin)
    assert org.invites.retrieve(owner_inv.id).status == "pending"  # refused, not spent
    # a reader invite is still within what the sender holds
    done, _ = _accept(server, reader_inv.model_extra["accept_url"])
    assert done.status_code == 303 and "clerk@example.com" in _emails(admin)
    # the check is made at acceptance: with the authority back, the owner invite works
    org.users.update(boss["id"], role="owner")
    done, _ = _accept(server, owner_inv.model_extra["accept_url"])
    assert done.status_code == 303
    assert {u.email: u.role for u in org.users.list()}["heir@example.com"] == "owner"


def test_an_invite_dies_with_its_senders_membership(admin, http, server):
    org = admin.admin.organization
    sender, theirs = user_with_key(server, http, "leaver@example.com", role="owner")
    inv = theirs.invites.create(email="friend@example.com", role="reader", projects=[])
    done, again = _accept(server, inv.model_extra["accept_url"], meanwhile=lambda: org.users.delete(sender["id"]))
    assert done.status_code == 403 and "no longer a member of the organization" in done.text
    assert again.status_code == 403 and "no longer a member of the organization" in again.text
    assert "friend@example.com" not in _emails(admin)


def test_an_invite_dies_with_its_senders_right_to_invite(admin, http, server):
    org = admin.admin.organization
    hr, theirs = user_with_key(server, http, "hr@example.com")  # a reader who may manage people
    people = org.roles.create(role_name="people", permissions=[ORG_READ, ORG_WRITE])
    org.users.roles.create(hr["id"], role_id=people.id)
    inv = theirs.invites.create(email="hire@example.com", role="reader", projects=[])
    done, _ = _accept(
        server, inv.model_extra["accept_url"], meanwhile=lambda: org.users.roles.delete(people.id, user_id=hr["id"])
    )
    assert done.status_code == 403 and "api.organization.write" in done.text
    assert "hire@example.com" not in _emails(admin)


def test_invites_without_a_sender_are_not_checked(admin, server):
    """The CLI acts as the server's operator: its invites carry no sender."""

    async def make() -> str:
        async with server.app.runtime.write() as s:
            inv, token = await invites.create_invite(
                s, control.CLI_ACTOR, server.settings.secret_key, email="cli@example.com", role="owner", projects=[]
            )
            assert inv.created_by is None
            return token

    done, _ = _accept(server, invites.ACCEPT_PATH + server.call(make()))
    assert done.status_code == 303 and "cli@example.com" in _emails(admin)


def _writer_in(org, server, http, pid: str, email: str):
    """A reader who may send invites (api.organization.write) and may add members to ``pid`` only (a
    project role with api.project.write there): their user and their admin SDK resource."""
    user, theirs = user_with_key(server, http, email)
    people = org.roles.create(role_name=f"people {email}", permissions=[ORG_READ, ORG_WRITE])
    org.users.roles.create(user["id"], role_id=people.id)
    make_member(server, pid, email)
    writer = org.projects.roles.create(pid, role_name=f"writer {email}", permissions=[PROJECT_READ, PROJECT_WRITE])
    org.projects.users.roles.create(user["id"], project_id=pid, role_id=writer.id)
    return user, theirs, writer


def test_an_invite_gives_only_projects_its_sender_may_add_members_to(admin, http, server):
    """An invite's ``projects`` add the invitee to them: sending one takes, for each listed project, what adding
    a member there directly takes (api.project.write in that project), whatever the role."""
    org = admin.admin.organization
    mine, theirs_pid = org.projects.create(name="mine").id, org.projects.create(name="not mine").id
    _, theirs, _ = _writer_in(org, server, http, mine, "lead@example.com")
    for projects in (
        [{"id": theirs_pid, "role": "owner"}],
        [{"id": theirs_pid, "role": "member"}],
        [{"id": mine, "role": "member"}, {"id": theirs_pid, "role": "member"}],
        None,  # no list: the default project, which the sender cannot add members to either
    ):
        extra = {} if projects is None else {"projects": projects}
        with pytest.raises(openai.PermissionDeniedError) as e:
            theirs.invites.create(email="sneak@example.com", role="reader", **extra)
        assert e.value.code == "insufficient_permissions", projects
        assert (theirs_pid if projects else server.project_id) in e.value.message
    assert org.invites.list().data == []
    # their own project, with either role, is theirs to give
    inv = theirs.invites.create(email="teammate@example.com", role="reader", projects=[{"id": mine, "role": "owner"}])
    done, _ = _accept(server, inv.model_extra["accept_url"])
    assert done.status_code == 303
    assert [(u.email, u.role) for u in org.projects.users.list(project_id=mine)][-1] == (
        "teammate@example.com",
        "owner",
    )


def test_an_invite_dies_with_its_senders_authority_over_its_projects(admin, http, server):
    org = admin.admin.organization
    mine = org.projects.create(name="mine").id
    lead, theirs, writer = _writer_in(org, server, http, mine, "lead@example.com")
    inv = theirs.invites.create(email="hire@example.com", role="reader", projects=[{"id": mine, "role": "member"}])
    done, again = _accept(
        server,
        inv.model_extra["accept_url"],
        meanwhile=lambda: org.projects.users.roles.delete(writer.id, project_id=mine, user_id=lead["id"]),
    )
    assert done.status_code == 403 and mine in done.text and "api.project.write" in done.text
    assert again.status_code == 403 and "<form" not in again.text
    assert "hire@example.com" not in _emails(admin)
    assert org.invites.retrieve(inv.id).status == "pending"  # refused, not spent
    # the authority back (the role again): the invite works
    org.projects.users.roles.create(lead["id"], project_id=mine, role_id=writer.id)
    done, _ = _accept(server, inv.model_extra["accept_url"])
    assert done.status_code == 303 and "hire@example.com" in _emails(admin)


def test_an_invite_to_an_archived_project_asks_nothing_of_its_sender_there(admin, http, server):
    """Accepting skips archived projects (nobody is added there), so losing authority over one kills nothing."""
    org = admin.admin.organization
    mine, gone = org.projects.create(name="mine").id, org.projects.create(name="gone").id
    lead, theirs, _ = _writer_in(org, server, http, mine, "lead@example.com")
    _writer_in(org, server, http, gone, "lead2@example.com")
    make_member(server, gone, "lead@example.com")
    writer2 = org.projects.roles.create(gone, role_name="w", permissions=[PROJECT_WRITE])
    org.projects.users.roles.create(lead["id"], project_id=gone, role_id=writer2.id)
    inv = theirs.invites.create(
        email="hire@example.com",
        role="reader",
        projects=[{"id": mine, "role": "member"}, {"id": gone, "role": "member"}],
    )
    org.projects.archive(gone)  # its project roles no longer count
    done, _ = _accept(server, inv.model_extra["accept_url"])
    assert done.status_code == 303
    assert [u.email for u in org.projects.users.list(project_id=mine)][-1] == "hire@example.com"
