"""More keys per service account, and service account update, through the official SDK."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from keyplane import keys


def test_second_key_for_rotation(admin, http, server):
    pid = server.project_id
    sas = admin.admin.organization.projects.service_accounts
    sa = sas.create(project_id=pid, name="deployer")
    second = sas.api_keys.create(sa.id, project_id=pid, name="deployer-2", scopes=["api.model.read"])
    assert second.object == "organization.project.service_account.api_key" and second.name == "deployer-2"
    assert keys.parse(second.value) == "svc" and second.value != sa.api_key.value
    got = http.get(f"/projects/{pid}/api_keys/{second.id}").json()
    assert got["owner"]["type"] == "service_account" and got["owner"]["service_account"]["id"] == sa.id
    assert got["permissions"] != "all" and got["status"] == "active"
    # rotation: the old key goes, the new one stays
    admin.admin.organization.projects.api_keys.delete(sa.api_key.id, project_id=pid)
    assert http.get(f"/projects/{pid}/api_keys/{second.id}").json()["status"] == "active"
    assert OpenAI(base_url=server.v1, api_key=second.value, max_retries=0).models.list().data  # read scope: allowed
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.v1, api_key=sa.api_key.value, max_retries=0).models.list()
    expiring = sas.api_keys.create(sa.id, project_id=pid, expires_in_seconds=3600)
    assert expiring.expires_at == expiring.created_at + 3600 and expiring.name == "deployer"
    with pytest.raises(openai.BadRequestError):
        sas.api_keys.create(sa.id, project_id=pid, scopes=["api.nonsense"])
    with pytest.raises(openai.NotFoundError):
        sas.api_keys.create("svc_missing", project_id=pid)
    other = admin.admin.organization.projects.create(name="other")
    with pytest.raises(openai.NotFoundError):  # a service account only gets keys in its own project
        sas.api_keys.create(sa.id, project_id=other.id)
    # deleting the account revokes every key it holds
    sas.delete(sa.id, project_id=pid)
    assert http.get(f"/projects/{pid}/api_keys/{expiring.id}").json()["status"] == "revoked"
    assert http.get(f"/projects/{pid}/api_keys/{second.id}").json()["status"] == "revoked"
    types = {e.type for e in admin.admin.organization.audit_logs.list(resource_ids=[second.id])}
    assert "api_key.created" in types


def test_update_service_account(admin, server):
    pid = server.project_id
    sas = admin.admin.organization.projects.service_accounts
    sa = sas.create(project_id=pid, name="bot")
    up = sas.update(sa.id, project_id=pid, role="owner", name="bot 2")
    assert up.role == "owner" and up.name == "bot 2"
    assert sas.retrieve(sa.id, project_id=pid).role == "owner"
    with pytest.raises(openai.BadRequestError):
        sas.update(sa.id, project_id=pid, role="emperor")  # type: ignore[arg-type]
    ev = list(admin.admin.organization.audit_logs.list(event_types=["service_account.updated"]))
    assert [e.service_account_updated.id for e in ev] == [sa.id]
