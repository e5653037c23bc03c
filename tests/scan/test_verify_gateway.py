"""--verify --revoke against a real running keyplane (SQLite and PostgreSQL): only SHA-256 of the found
keys reaches the gateway; the live planted key is revoked with its location, the others are left alone."""

from __future__ import annotations

import json

import httpx
from openai import OpenAI

from keyplane import keys
from tests.scan.helpers import Repo, cli


def _key(server, name: str) -> dict:
    r = httpx.post(
        f"{server.v1}/organization/projects/{server.project_id}/api_keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_verify_and_revoke_against_keyplane(server, tmp_path):
    leaked = _key(server, "leaked")
    safe = _key(server, "not in the repo")
    unknown = keys.generate("proj")  # well-formed, but not a key of this deployment
    repo = Repo(tmp_path / "repo")
    repo.commit("config", **{"app/settings.py": f'KEY = "{leaked["value"]}"\nOTHER = "{unknown}"\n'})

    res = cli(
        str(repo.path),
        "--history",
        "--verify",
        "--revoke",
        "--json",
        "--gateway",
        server.base_url,
        "--admin-key",
        server.admin_key,
    )
    assert res.exit_code == 1, res.output  # findings
    assert leaked["value"] not in res.output and unknown not in res.output
    report = json.loads(res.stdout)
    assert report

    h = {"Authorization": f"Bearer {server.admin_key}"}
    got = httpx.get(f"{server.v1}/organization/projects/{server.project_id}/api_keys/{leaked['id']}", headers=h).json()
    assert got["status"] == "revoked"
    assert got["revoke_reason"].startswith("leaked: app/settings.py:1@")
    assert (
        httpx.get(f"{server.v1}/organization/projects/{server.project_id}/api_keys/{safe['id']}", headers=h).json()[
            "status"
        ]
        == "active"
    )
    # the revoked key no longer works on the proxy; the one never leaked still does
    c = OpenAI(base_url=server.v1, api_key=leaked["value"], max_retries=0)
    try:
        c.models.list()
        raise AssertionError("a revoked key was accepted")
    except Exception as e:  # openai.AuthenticationError
        assert "revoked" in str(e)
    assert OpenAI(base_url=server.v1, api_key=safe["value"], max_retries=0).models.list().data is not None
    # the audit log names the scanner's reason
    audit = httpx.get(
        f"{server.v1}/organization/audit_logs", headers=h, params={"resource_ids[]": leaked["id"]}
    ).json()["data"]
    assert audit[0]["type"] == "api_key.deleted" and audit[0]["api_key.deleted"]["reason"].startswith("leaked:")
