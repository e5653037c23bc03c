"""The dashboard shows a reader only the projects they are a member of (organization owners see all)."""

from __future__ import annotations

import re

import pytest

from tests.members.support import make_member
from tests.web.conftest import Web


@pytest.fixture
def reader(owner, web_server, clock):
    r = owner.post("/users", {"email": "reader@example.com", "role": "reader"})
    password = re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1)
    w = Web(web_server, clock)
    w.sign_in("reader@example.com", password)
    yield w
    w.close()


def test_reader_sees_only_member_projects(owner, reader, web_server):
    pid = web_server.project_id
    r = owner.post("/projects", {"name": "Secret lab"})
    assert r.status_code == 303
    secret_pid = r.headers["location"].rsplit("/", 1)[1]
    assert "Secret lab" in owner.get("/projects").text and "Default project" in owner.get("/projects").text
    assert reader.get(f"/projects/{pid}").status_code == 404
    assert "Default project" not in reader.get("/projects").text
    make_member(web_server, pid, "reader@example.com")
    assert reader.get(f"/projects/{pid}").status_code == 200
    listing = reader.get("/projects").text
    assert "Default project" in listing and "Secret lab" not in listing
    assert reader.get(f"/projects/{secret_pid}").status_code == 404
    assert owner.get(f"/projects/{secret_pid}").status_code == 200


def test_the_dashboard_uses_the_effective_permissions(owner, reader, web_server):
    """The dashboard's owner pages need every permission of the table: the owner role, or custom roles that
    add up to it; taking a role away refuses the very next page."""
    import httpx

    auth = {"Authorization": f"Bearer {web_server.admin_key}"}
    with httpx.Client(base_url=web_server.v1 + "/organization", headers=auth, timeout=10) as http:
        uid = next(u["id"] for u in http.get("/users").json()["data"] if u["email"] == "reader@example.com")
        assert reader.post("/projects", {"name": "as reader"}).status_code == 403
        half = http.post("/roles", json={"role_name": "half", "permissions": ["api.project.write"]}).json()
        rest = http.post("/roles", json={"role_name": "rest", "permissions": ["api.organization.write"]}).json()
        assert http.post(f"/users/{uid}/roles", json={"role_id": half["id"]}).status_code == 200
        assert reader.post("/projects", {"name": "half"}).status_code == 403  # not every permission yet
        assert http.post(f"/users/{uid}/roles", json={"role_id": rest["id"]}).status_code == 200
        assert reader.post("/projects", {"name": "all"}).status_code == 303
        assert http.delete(f"/users/{uid}/roles/{rest['id']}").status_code == 200
        assert reader.post("/projects", {"name": "again"}).status_code == 403
