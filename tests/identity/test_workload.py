"""Workload identity federation end to end: a JWKS the test serves, tokens it signs, the official SDK."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import openai
import pytest
from openai import OpenAI

from keyplane.testing.fake_oidc import FakeOIDC
from tests.support import RunningServer

AUD = "keyplane-test"
SUB = "system:serviceaccount:ci:runner"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


def _setup(gateway: RunningServer, admin: OpenAI, idp: FakeOIDC, **rule: Any) -> tuple[str, str, str]:
    """(provider id, service account id, rule id)."""
    org = admin.admin.organization
    sa = org.projects.service_accounts.create(project_id=gateway.project_id, name="ci")
    prov = org.workload_identity_providers.create(
        name="k8s",
        type="oidc",
        issuer=idp.issuer,
        audience=AUD,
        verification={"type": "discovery", "discovery_url": None},
    )
    assert prov.enabled and prov.verification.type == "discovery"
    r = org.workload_identity_providers.federation_rules.create(
        prov.id,
        project_id=gateway.project_id,
        service_account_id=sa.id,
        attribute_matchers=rule.pop("attribute_matchers", {"sub": SUB}),
        **rule,
    )
    assert r.object == "organization.workload_identity_federation_rule" and r.enabled
    return prov.id, sa.id, r.id


def _exchange(gateway: RunningServer, subject: str, pid: str, sa_id: str) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/oauth/token",
        json={
            "grant_type": GRANT,
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "identity_provider_id": pid,
            "service_account_id": sa_id,
        },
        timeout=10,
    )


def _chat(client: OpenAI) -> str | None:
    out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return out.choices[0].message.content


def test_sdk_workload_identity_then_rule_disabled_then_sa_deleted(gateway, admin, idp):
    pid, sa_id, rid = _setup(gateway, admin, idp)
    rules = admin.admin.organization.workload_identity_providers.federation_rules
    client = OpenAI(
        base_url=gateway.v1,
        max_retries=0,
        workload_identity={
            "identity_provider_id": pid,
            "service_account_id": sa_id,
            "provider": {"token_type": "jwt", "get_token": lambda: idp.sign({"sub": SUB, "aud": AUD})},
        },
    )
    client._workload_identity_auth.token_exchange_url = gateway.base_url + "/oauth/token"  # the one documented line
    assert _chat(client)

    # api_key=<callable>: the application refreshes the token itself.
    token = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()
    assert token["token_type"] == "Bearer" and 0 < token["expires_in"] <= 3600
    assert token["access_token"].startswith("sk-kp-wit-")
    by_callable = OpenAI(base_url=gateway.v1, max_retries=0, api_key=lambda: token["access_token"])
    assert _chat(by_callable)

    # The rule disabled: the next exchange is refused, and so is the access token already issued.
    rules.update(rid, workload_identity_provider_id=pid, enabled=False)
    r = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    with pytest.raises(openai.AuthenticationError, match="rule is disabled"):
        _chat(by_callable)

    # Enabled again; then the service account deleted: the access token is refused.
    rules.update(rid, workload_identity_provider_id=pid, enabled=True)
    fresh = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
    c2 = OpenAI(base_url=gateway.v1, max_retries=0, api_key=fresh)
    assert _chat(c2)
    admin.admin.organization.projects.service_accounts.delete(sa_id, project_id=gateway.project_id)
    with pytest.raises(openai.AuthenticationError):
        _chat(c2)
    assert _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).status_code == 400


def test_provider_disabled_refuses_tokens(gateway, admin, idp):
    pid, sa_id, _ = _setup(gateway, admin, idp)
    tok = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
    admin.admin.organization.workload_identity_providers.update(pid, enabled=False)
    with pytest.raises(openai.AuthenticationError, match="provider is disabled"):
        _chat(OpenAI(base_url=gateway.v1, max_retries=0, api_key=tok))
    assert _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_subject_tokens_that_must_be_refused(gateway, admin, idp):
    pid, sa_id, _ = _setup(gateway, admin, idp)
    other = FakeOIDC()  # keys the issuer never published
    now = int(time.time())
    pub = idp.keys[-1].private.public_key()
    from cryptography.hazmat.primitives import serialization

    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = {
        "wrong audience": idp.sign({"sub": SUB, "aud": "someone-else"}),
        "wrong issuer": idp.sign({"sub": SUB, "aud": AUD, "iss": "https://evil.example"}),
        "expired": idp.sign({"sub": SUB, "aud": AUD, "iat": now - 3600, "exp": now - 600}),
        "not yet valid": idp.sign({"sub": SUB, "aud": AUD, "nbf": now + 600}),
        "no exp": jwt.encode(
            {"sub": SUB, "aud": AUD, "iss": idp.issuer, "iat": now},
            idp.keys[-1].private,
            algorithm="RS256",
            headers={"kid": idp.keys[-1].kid},
        ),
        "other key, same kid": other.sign(
            {"sub": SUB, "aud": AUD, "iss": idp.issuer}, headers={"kid": idp.keys[-1].kid}
        ),
        "alg none": jwt.encode(
            {"sub": SUB, "aud": AUD, "iss": idp.issuer, "iat": now, "exp": now + 60},
            None,
            algorithm="none",
            headers={"kid": idp.keys[-1].kid},
        ),
        "HS256 with the public key": _hs256(
            pem, {"sub": SUB, "aud": AUD, "iss": idp.issuer, "iat": now, "exp": now + 60}, idp.keys[-1].kid
        ),
        "unknown kid": idp.sign({"sub": SUB, "aud": AUD}, headers={"kid": "nope"}),
        "garbage": "not-a-jwt",
    }
    for why, token in forged.items():
        r = _exchange(gateway, token, pid, sa_id)
        assert r.status_code == 400 and r.json()["error"] == "invalid_subject_token", why
    # A valid token of a workload the rule does not name.
    r = _exchange(gateway, idp.sign({"sub": "system:serviceaccount:ci:other", "aud": AUD}), pid, sa_id)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # A forged access token.
    good = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
    body = good.partition(".")[0]
    for bad in (body + ".AAAA", good[:-2] + ("AA" if not good.endswith("AA") else "BB"), "sk-kp-wit-x"):
        with pytest.raises(openai.AuthenticationError):
            _chat(OpenAI(base_url=gateway.v1, max_retries=0, api_key=bad))


def _hs256(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_key_rotation_by_kid_and_rule_claims(gateway, admin, idp):
    pid, sa_id, _ = _setup(gateway, admin, idp, attribute_matchers={"repository": "acme/api", "ref": "refs/heads/main"})
    gateway.app.runtime.features.identity_jwks.min_refetch = 0
    claims = {
        "sub": "repo:acme/api:ref:refs/heads/main",
        "aud": AUD,
        "repository": "acme/api",
        "ref": "refs/heads/main",
    }
    assert _exchange(gateway, idp.sign(claims), pid, sa_id).status_code == 200
    idp.rotate()  # a new key the cached JWKS does not have: fetched again by its kid
    assert _exchange(gateway, idp.sign(claims), pid, sa_id).status_code == 200
    assert (
        _exchange(gateway, idp.sign({**claims, "ref": "refs/heads/dev"}), pid, sa_id).json()["error"] == "invalid_grant"
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_admin_shapes_and_validation(gateway, admin, idp):
    org = admin.admin.organization
    with pytest.raises(openai.BadRequestError):
        org.workload_identity_providers.create(name="x", type="oidc", issuer="http://evil.example", audience=AUD)
    pid, sa_id, rid = _setup(gateway, admin, idp, permissions={"type": "restricted", "scopes": ["api.model.request"]})
    with pytest.raises(openai.BadRequestError):  # a rule that would match every token of the issuer
        org.workload_identity_providers.federation_rules.create(
            pid, project_id=gateway.project_id, service_account_id=sa_id, attribute_matchers={}
        )
    assert [p.id for p in org.workload_identity_providers.list()] == [pid]
    got = org.workload_identity_providers.federation_rules.retrieve(rid, workload_identity_provider_id=pid)
    assert got.permissions.type == "restricted" and got.service_account_id == sa_id
    with pytest.raises(openai.ConflictError):
        org.workload_identity_providers.delete(pid)
    gone = org.workload_identity_providers.federation_rules.delete(rid, workload_identity_provider_id=pid)
    assert gone.deleted
    assert org.workload_identity_providers.delete(pid).deleted


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_restricted_rule_and_streaming(gateway, admin, idp):
    pid, sa_id, _ = _setup(gateway, admin, idp, permissions={"type": "restricted", "scopes": ["api.model.request"]})
    tok = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
    client = OpenAI(base_url=gateway.v1, max_retries=0, api_key=tok)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.PermissionDeniedError):
        client.files.list()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_rule_disabled_reaches_another_instance_within_a_second(gateway, admin, idp, gateways):
    pid, sa_id, rid = _setup(gateway, admin, idp)
    other = gateways.another(gateway)
    try:
        tok = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
        on_other = OpenAI(base_url=other.v1, max_retries=0, api_key=tok)
        assert _chat(on_other)
        admin.admin.organization.workload_identity_providers.federation_rules.update(
            rid, workload_identity_provider_id=pid, enabled=False
        )
        deadline = time.monotonic() + 1.0
        while True:  # polls the other instance until it refuses (bounded: the promise is < 1 s)
            try:
                _chat(on_other)
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "the other instance still accepts the token after 1 s"
    finally:
        other.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_access_token_does_not_open_the_admin_api(gateway, admin, idp):
    pid, sa_id, _ = _setup(gateway, admin, idp)
    tok = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).json()["access_token"]
    r = httpx.get(gateway.v1 + "/organization/projects", headers={"Authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 401 and "workload access token" in r.json()["error"]["message"]
    assert tok not in r.text


def test_access_token_expiry_and_mac():
    from keyplane.errors import APIError
    from keyplane.identity import tokens

    secret = b"s" * 32
    tok = tokens.mint(secret, rule_id="wifr_1", service_account_id="svc_acct_1", expires_at=1000)
    assert tokens.verify(secret, tok, 999.0) == ("wifr_1", "svc_acct_1")
    with pytest.raises(APIError, match="expired"):
        tokens.verify(secret, tok, 1000.0)
    with pytest.raises(APIError, match="not one this server issued"):
        tokens.verify(b"t" * 32, tok, 999.0)  # another server's secret
    with pytest.raises(APIError, match="malformed"):
        tokens.verify(secret, tok + "x" * tokens.MAX_TOKEN, 999.0)
