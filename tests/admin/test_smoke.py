import httpx


def test_projects_list(server):
    r = httpx.get(server.v1 + "/organization/projects", headers={"Authorization": f"Bearer {server.admin_key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [p["name"] for p in body["data"]] == ["Default project"]
