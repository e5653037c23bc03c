# ruff: noqa: F811 - the fixtures shared from tests/identity and tests/realtime are parameters here
"""Week 49 red-team review of workload identity federation (keyplane.identity) and what it mints: each test
failed while its hole was open. Real HTTP and WebSockets, the official SDK, a JWKS the test serves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
import websockets
from openai import OpenAI

from keyplane.testing.fake_oidc import FakeOIDC
from tests.identity.conftest import admin, gateway, idp, idp_session  # noqa: F401 - the fixtures, shared
from tests.proxy.conftest import wait_for
from tests.realtime.conftest import fake_rt, make_gateway  # noqa: F401 - the fixtures, shared
from tests.support import RunningServer, start_server

AUD = "keyplane-test"
SUB = "system:serviceaccount:ci:runner"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


def _adm(srv: RunningServer, method: str, path: str, body: Any = None) -> dict[str, Any]:
    r = httpx.request(
        method,
        srv.v1 + "/organization" + path,
        json=body,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        timeout=30,
    )
    assert r.status_code < 300, r.text
    return r.json()  # type: ignore[no-any-return]


def _setup(srv: RunningServer, idp: FakeOIDC, matchers: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """(provider id, service account id, rule id)."""
    sa = _adm(srv, "POST", f"/projects/{srv.project_id}/service_accounts", {"name": "ci"})
    prov = _adm(
        srv,
        "POST",
        "/workload_identity_providers",
        {
            "name": "k8s",
            "type": "oidc",
            "issuer": idp.issuer,
            "audience": AUD,
            "verification": {"type": "discovery", "discovery_url": None},
        },
    )
    rule = _adm(
        srv,
        "POST",
        f"/workload_identity_providers/{prov['id']}/federation_rules",
        {"project_id": srv.project_id, "service_account_id": sa["id"], "attribute_matchers": matchers or {"sub": SUB}},
    )
    return prov["id"], sa["id"], rule["id"]


def _exchange(srv: RunningServer, subject: str, pid: str, sa_id: str, **headers: str) -> httpx.Response:
    return httpx.post(
        srv.base_url + "/oauth/token",
        headers=headers,
        json={
            "grant_type": GRANT,
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "identity_provider_id": pid,
            "service_account_id": sa_id,
        },
        timeout=10,
    )


def _token(srv: RunningServer, idp: FakeOIDC, pid: str, sa_id: str, claims: dict[str, Any] | None = None) -> str:
    r = _exchange(srv, idp.sign(claims or {"sub": SUB, "aud": AUD}), pid, sa_id)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]  # type: ignore[no-any-return]


def _ws(srv: RunningServer) -> str:
    return srv.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


def _open_with_secret(srv: RunningServer, secret: str) -> int:
    async def go() -> int:
        try:
            async with websockets.connect(
                _ws(srv).split("?")[0], subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]
            ) as ws:
                assert '"session.created"' in await ws.recv()
                return 101
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(go())


async def _held_until_cut(url: str, seconds: float, opened: asyncio.Event | None = None, **kw: Any) -> int | None:
    """Open a session (``opened`` is set once it is), then wait (the caller disables something meanwhile): its
    close code, None if still open."""
    async with websockets.connect(url, **kw) as ws:
        assert '"session.created"' in await ws.recv()
        if opened is not None:
            opened.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            except websockets.exceptions.ConnectionClosed:
                return ws.close_code
    return None


# --- a realtime client secret minted with a workload token ----------------------------------------------------


def test_wk49_a_client_secret_minted_with_a_workload_token_dies_with_its_rule(make_gateway, idp):
    """Before: the secret (up to 2 h) was checked against the rule's keyless key only, which a disabled rule
    does not revoke: it outlived the 15-minute token, and the rule's disabling, and opened sessions after it."""
    srv = make_gateway()
    pid, sa_id, rid = _setup(srv, idp)
    tok = _token(srv, idp, pid, sa_id)
    cs = OpenAI(base_url=srv.v1, api_key=tok, max_retries=0).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}, expires_after={"anchor": "created_at", "seconds": 7200}
    )
    assert _open_with_secret(srv, cs.value) == 101

    async def scenario() -> int | None:
        opened = asyncio.Event()
        session = asyncio.ensure_future(
            _held_until_cut(
                _ws(srv).split("?")[0],
                6,
                opened,
                subprotocols=["realtime", f"openai-insecure-api-key.{cs.value}"],
            )
        )
        await asyncio.wait_for(opened.wait(), 10)  # the session is open (session.created) before the change
        await asyncio.to_thread(
            _adm, srv, "POST", f"/workload_identity_providers/{pid}/federation_rules/{rid}", {"enabled": False}
        )
        return await session

    assert asyncio.run(scenario()) == 1008  # the live session is cut
    assert _open_with_secret(srv, cs.value) == 401  # and the secret opens no other
    assert cs.expires_at <= time.time() + 900 + 5  # and it never outlived the token it was minted with


def test_wk49_a_realtime_session_of_a_workload_token_ends_when_its_provider_is_disabled(make_gateway, idp):
    """Before: the session's watch looked at the rule's key row only; a disabled provider left it running."""
    srv = make_gateway()
    pid, sa_id, _ = _setup(srv, idp)
    tok = _token(srv, idp, pid, sa_id)

    async def scenario() -> int | None:
        opened = asyncio.Event()
        session = asyncio.ensure_future(
            _held_until_cut(_ws(srv), 6, opened, additional_headers={"Authorization": f"Bearer {tok}"})
        )
        await asyncio.wait_for(opened.wait(), 10)  # the session is open (session.created) before the change
        await asyncio.to_thread(_adm, srv, "POST", f"/workload_identity_providers/{pid}", {"enabled": False})
        return await session

    assert asyncio.run(scenario()) == 1008


# --- access tokens issued under terms that changed ---------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wk49_narrowing_a_rule_ends_the_tokens_it_no_longer_matches(gateway, admin, idp):
    """Before: an owner who narrowed a rule's matchers (or changed the provider's issuer or audience) to shut
    a workload out left every access token issued under the old terms working until it expired."""
    pid, sa_id, rid = _setup(gateway, idp, {"repository": "acme/api"})
    claims = {"sub": "repo:acme/api:ref:refs/heads/dev", "aud": AUD, "repository": "acme/api", "ref": "refs/heads/dev"}
    tok = _token(gateway, idp, pid, sa_id, claims)
    client = OpenAI(base_url=gateway.v1, max_retries=0, api_key=tok)
    client.models.list()
    _adm(
        gateway,
        "POST",
        f"/workload_identity_providers/{pid}/federation_rules/{rid}",
        {"attribute_matchers": {"repository": "acme/api", "ref": "refs/heads/main"}},
    )
    with pytest.raises(openai.AuthenticationError, match="changed since it was issued"):
        client.models.list()
    # A token issued under the new terms works; one under an audience changed afterwards does not.
    main = _token(gateway, idp, pid, sa_id, {**claims, "ref": "refs/heads/main"})
    OpenAI(base_url=gateway.v1, max_retries=0, api_key=main).models.list()
    _adm(gateway, "POST", f"/workload_identity_providers/{pid}", {"audience": "another-audience"})
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=gateway.v1, max_retries=0, api_key=main).models.list()


# --- /oauth/token is bounded ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wk49_token_exchange_is_rate_limited_per_address(gateway, admin, idp):
    """Before: /oauth/token had no limit at all (each call a signature check, SQL reads, maybe a JWKS fetch)."""
    from keyplane.identity.exchange import PER_IP

    pid, sa_id, _ = _setup(gateway, idp)
    junk = idp.sign({"sub": "someone-else", "aud": AUD})
    client = OpenAI(
        base_url=gateway.v1,
        max_retries=0,
        workload_identity={
            "identity_provider_id": pid,
            "service_account_id": sa_id,
            "provider": {"token_type": "jwt", "get_token": lambda: idp.sign({"sub": SUB, "aud": AUD})},
        },
    )
    client._workload_identity_auth.token_exchange_url = gateway.base_url + "/oauth/token"
    codes: list[int] = []
    t0 = time.monotonic()
    with httpx.Client(timeout=10) as c:
        for _ in range(2 * PER_IP[0]):
            r = c.post(
                gateway.base_url + "/oauth/token",
                json={
                    "grant_type": GRANT,
                    "subject_token": junk,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "identity_provider_id": pid,
                    "service_account_id": sa_id,
                },
            )
            codes.append(r.status_code)
            if r.status_code == 429:
                break
    refilled = (time.monotonic() - t0) * PER_IP[0] / PER_IP[1]
    assert codes[-1] == 429 and set(codes[:-1]) == {400}
    assert PER_IP[0] <= len(codes) - 1 <= PER_IP[0] + refilled + 1
    body = r.json()
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert 1 <= int(r.headers["retry-after"]) <= 60 and int(r.headers["retry-after-ms"]) > 0
    # The SDK's token exchange surfaces it as an error, not a token.
    with pytest.raises(openai.OpenAIError, match="429"):
        client.models.list()


def test_wk49_token_exchange_is_rate_limited_per_provider(tmp_path, idp, fake):
    """Many addresses (behind a trusted proxy) naming one provider id are bounded together."""
    from keyplane.identity.exchange import PER_IP, PER_PROVIDER
    from tests.proxy.conftest import fake_config
    from tests.support import init_org, make_settings

    settings = make_settings(tmp_path / "home", "", config_text=fake_config(fake), KEYPLANE_TRUSTED_PROXIES="127.0.0.1")
    srv = start_server(settings, init_org(settings))
    try:
        pid, sa_id, _ = _setup(srv, idp)
        junk = idp.sign({"sub": "someone-else", "aud": AUD})
        codes: list[int] = []
        t0 = time.monotonic()
        with httpx.Client(timeout=10) as c:
            for i in range(2 * PER_PROVIDER[0]):
                r = c.post(
                    srv.base_url + "/oauth/token",
                    headers={"X-Forwarded-For": f"198.51.{i // 250}.{i % 250}"},
                    json={
                        "grant_type": GRANT,
                        "subject_token": junk,
                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                        "identity_provider_id": pid,
                        "service_account_id": sa_id,
                    },
                )
                codes.append(r.status_code)
                if r.status_code == 429:
                    break
        refilled = (time.monotonic() - t0) * PER_PROVIDER[0] / PER_PROVIDER[1]
        assert PER_PROVIDER[0] > PER_IP[0]  # every address stayed under its own limit
        assert codes[-1] == 429 and set(codes[:-1]) == {400}
        assert PER_PROVIDER[0] <= len(codes) - 1 <= PER_PROVIDER[0] + refilled + 1
        assert "identity provider" in r.json()["error"]["message"]
    finally:
        srv.stop()


# --- the JWKS cache follows the provider's issuer on every instance ---------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_wk49_an_issuer_changed_elsewhere_is_never_verified_with_the_old_issuers_keys(gateway, admin, idp):
    """Before: the JWKS cache was keyed by provider id alone; only the instance that took the update forgot it.
    Another instance went on verifying tokens claiming the NEW issuer with the OLD issuer's keys (for up to
    the cache's 5 minutes): whoever held the old issuer's signing key got access tokens."""
    pid, sa_id, rid = _setup(gateway, idp)
    other = start_server(gateway.settings, gateway.init)
    with FakeOIDC() as new_idp:
        try:
            assert _exchange(other, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).status_code == 200  # cached
            identity = other.app.runtime.features.identity
            before = identity.rule(rid).generation
            _adm(gateway, "POST", f"/workload_identity_providers/{pid}", {"issuer": new_idp.issuer})
            # The change reaches the other instance's identity state (the rule's terms there name the new issuer).
            wait_for(lambda: identity.rule(rid).generation != before, timeout=10)
            forged = idp.sign({"sub": SUB, "aud": AUD, "iss": new_idp.issuer})  # old key, new issuer's name
            r = _exchange(other, forged, pid, sa_id)
            assert r.status_code == 400 and r.json()["error"] == "invalid_subject_token", r.text
            assert _exchange(other, new_idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id).status_code == 200
        finally:
            other.stop()


def test_wk49_access_tokens_and_secrets_stay_out_of_error_bodies(make_gateway, idp):
    srv = make_gateway()
    pid, sa_id, rid = _setup(srv, idp)
    tok = _token(srv, idp, pid, sa_id)
    cs = OpenAI(base_url=srv.v1, api_key=tok, max_retries=0).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}
    )
    _adm(srv, "POST", f"/workload_identity_providers/{pid}/federation_rules/{rid}", {"enabled": False})
    r = httpx.get(srv.v1 + "/models", headers={"Authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 401 and tok not in r.text and tok[10:40] not in r.text
    log = orjson.dumps(_adm(srv, "GET", "/audit_logs?limit=100")).decode()
    assert tok[10:40] not in log and cs.value[6:40] not in log


# --- one slow issuer delays no other provider's exchanges -------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wk49_a_slow_issuer_does_not_stall_every_other_providers_exchange(gateway, admin, idp):
    """Before: one lock served every provider's JWKS fetch. Anyone who knew the id of a provider whose issuer
    was slow or down (a 5 s timeout) could keep every other provider's exchanges waiting behind it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    fetching = threading.Event()

    class Tarpit(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetching.set()
            time.sleep(4)  # the point: a slow issuer (its JWKS fetch holds the provider's lock meanwhile)
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    tarpit = ThreadingHTTPServer(("127.0.0.1", 0), Tarpit)
    threading.Thread(target=tarpit.serve_forever, daemon=True).start()
    try:
        sa = _adm(gateway, "POST", f"/projects/{gateway.project_id}/service_accounts", {"name": "slow"})
        slow = _adm(
            gateway,
            "POST",
            "/workload_identity_providers",
            {"name": "slow", "type": "oidc", "issuer": f"http://127.0.0.1:{tarpit.server_address[1]}", "audience": AUD},
        )
        _adm(
            gateway,
            "POST",
            f"/workload_identity_providers/{slow['id']}/federation_rules",
            {"project_id": gateway.project_id, "service_account_id": sa["id"], "attribute_matchers": {"sub": SUB}},
        )
        pid, sa_id, _ = _setup(gateway, idp)

        def stall() -> None:
            _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), slow["id"], sa["id"])

        t = threading.Thread(target=stall)
        t.start()
        assert fetching.wait(10)  # the slow provider's fetch reached its issuer: it holds its lock now
        t0 = time.monotonic()
        r = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), pid, sa_id)
        took = time.monotonic() - t0
        t.join()
        assert r.status_code == 200, r.text
        assert took < 2.0, f"the healthy provider's exchange waited {took:.1f}s behind the slow issuer"
        # A failed fetch is not retried at once: a flood of exchanges is not a flood of fetches to the issuer.
        t0 = time.monotonic()
        r = _exchange(gateway, idp.sign({"sub": SUB, "aud": AUD}), slow["id"], sa["id"])
        assert r.status_code == 400 and time.monotonic() - t0 < 2.0
    finally:
        tarpit.shutdown()


# --- a transformed attribute comes from its expression only ----------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wk49_a_top_level_claim_cannot_stand_in_for_a_transformed_attribute(gateway, admin, idp):
    """Before: a rule matching `namespace` (transformed from `assertion.kubernetes.io.namespace`) also matched
    a token with no such nested claim but a top-level `namespace` claim of that value."""
    sa = _adm(gateway, "POST", f"/projects/{gateway.project_id}/service_accounts", {"name": "k8s"})
    prov = _adm(
        gateway,
        "POST",
        "/workload_identity_providers",
        {
            "name": "k8s",
            "type": "oidc",
            "issuer": idp.issuer,
            "audience": AUD,
            "attribute_transformations": [
                {"attribute": "namespace", "expression": "assertion.kubernetes.io.namespace"}
            ],
        },
    )
    _adm(
        gateway,
        "POST",
        f"/workload_identity_providers/{prov['id']}/federation_rules",
        {"project_id": gateway.project_id, "service_account_id": sa["id"], "attribute_matchers": {"namespace": "prod"}},
    )
    missing = {"sub": SUB, "aud": AUD, "namespace": "prod"}
    assert _exchange(gateway, idp.sign(missing), prov["id"], sa["id"]).json()["error"] == "invalid_grant"
    flat = {"sub": SUB, "aud": AUD, "namespace": "prod", "kubernetes.io": {"namespace": "dev"}}
    assert _exchange(gateway, idp.sign(flat), prov["id"], sa["id"]).json()["error"] == "invalid_grant"
    # The documented Kubernetes example: `kubernetes.io` is ONE claim holding a dot (it never matched before).
    nested = {"sub": SUB, "aud": AUD, "kubernetes.io": {"namespace": "prod"}}
    assert _exchange(gateway, idp.sign(nested), prov["id"], sa["id"]).status_code == 200


# --- a disabled rule is applied even when the first reload after it fails -----------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_wk49_a_rule_disabled_while_the_reload_fails_is_still_applied(gateway, admin, idp):
    """Before: the identity state reloaded once per change; when that reload failed (a database blip) the
    disabled rule stayed enabled in memory, and its tokens kept working, until some other change came."""
    import asyncpg

    pid, sa_id, rid = _setup(gateway, idp)
    tok = _token(gateway, idp, pid, sa_id)
    client = OpenAI(base_url=gateway.v1, max_retries=0, api_key=tok)
    client.models.list()
    url = gateway.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def sql(stmt: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(stmt)
        finally:
            await conn.close()

    import logging
    import threading

    reload_failed = threading.Event()

    class _Failed(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "reloading federation rules failed" in record.getMessage():
                reload_failed.set()

    failed = _Failed(logging.WARNING)
    logging.getLogger("keyplane.identity").addHandler(failed)
    asyncio.run(sql("ALTER TABLE workload_identity_providers RENAME TO wip_hidden"))  # every reload fails now
    try:
        r = httpx.post(
            gateway.v1 + f"/organization/workload_identity_providers/{pid}/federation_rules/{rid}",
            json={"enabled": False},
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text  # committed (and answered) although this instance could not reload
        assert reload_failed.wait(10), "the identity state never tried (and failed) to reload"
    finally:
        logging.getLogger("keyplane.identity").removeHandler(failed)
        asyncio.run(sql("ALTER TABLE wip_hidden RENAME TO workload_identity_providers"))
    deadline = time.monotonic() + 8
    while True:  # no other change comes: the state must retry on its own
        try:
            client.models.list()
        except openai.AuthenticationError as e:
            assert "disabled" in e.message
            break
        assert time.monotonic() < deadline, "the disabled rule's token still works"
        time.sleep(0.2)  # poll interval (a deadline loop)


def test_wk49_narrowing_a_rule_ends_its_realtime_sessions_and_client_secrets(make_gateway, idp):
    """What a token opened ends with the terms it was issued under: a live session (opened with the token)
    is cut and a client secret (minted with it) refused once the rule's matchers change."""
    srv = make_gateway()
    pid, sa_id, rid = _setup(srv, idp, {"repository": "acme/api"})
    tok = _token(srv, idp, pid, sa_id, {"sub": SUB, "aud": AUD, "repository": "acme/api"})
    cs = OpenAI(base_url=srv.v1, api_key=tok, max_retries=0).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}
    )

    async def scenario() -> int | None:
        opened = asyncio.Event()
        session = asyncio.ensure_future(
            _held_until_cut(_ws(srv), 6, opened, additional_headers={"Authorization": f"Bearer {tok}"})
        )
        await asyncio.wait_for(opened.wait(), 10)  # the session is open (session.created) before the change
        await asyncio.to_thread(
            _adm,
            srv,
            "POST",
            f"/workload_identity_providers/{pid}/federation_rules/{rid}",
            {"attribute_matchers": {"repository": "acme/api", "ref": "refs/heads/main"}},
        )
        return await session

    assert _open_with_secret(srv, cs.value) == 101
    assert asyncio.run(scenario()) == 1008
    assert _open_with_secret(srv, cs.value) == 401


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wk49_an_http_stream_of_a_workload_token_is_cut_when_its_rule_is_disabled(gateway, admin, idp):
    """Before: only the next request of the token was refused; a stream in flight ran to its end."""
    pid, sa_id, rid = _setup(gateway, idp)
    tok = _token(gateway, idp, pid, sa_id)

    async def go() -> bytes:
        out = b""
        async with (
            httpx.AsyncClient(timeout=30) as h,
            h.stream(
                "POST",
                f"{gateway.v1}/chat/completions",
                headers={
                    "Authorization": f"Bearer {tok}",
                    "x-fake-chunk-delay-ms": "50",
                    "x-fake-text": " ".join(["word"] * 200),
                },
                json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            ) as r,
        ):
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                out += chunk
                if out.count(b"\n\n") == 3:
                    await asyncio.to_thread(
                        _adm,
                        gateway,
                        "POST",
                        f"/workload_identity_providers/{pid}/federation_rules/{rid}",
                        {"enabled": False},
                    )
        return out

    out = asyncio.run(go())
    assert b'"error"' in out and b"invalid_api_key" in out
    assert out.count(b"chat.completion.chunk") < 100
