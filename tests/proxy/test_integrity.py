"""Enforcement integrity (issue #12): one canonical request, whatever shape a client gives it.

A client holding a valid key tries every path encoding, method, header, content type and field value
it controls; each must be refused with a clear error before the upstream, or be authorized, admitted,
metered and forwarded as the one canonical request.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from keyplane.testing.fake_upstream import Behaviour
from tests.proxy.conftest import UPSTREAM_KEY, admin, new_key, output_limit, wait_for

MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}


def raw_http(
    base: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with the request target exactly as given (no client-side normalization)."""
    u = urlsplit(base)
    h = {"Host": u.netloc, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    raw_headers, _, payload = rest.partition(b"\r\n\r\n")
    out = {}
    for line in raw_headers.split(b"\r\n"):
        k, _, v = line.partition(b":")
        out[k.decode().lower()] = v.decode().strip()
    if out.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return int(status_line.split()[1]), out, payload


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += data[:n]
        data = data[n + 2 :]
    return out


def auth(gw) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.api_key}", "Content-Type": "application/json"}


AMBIGUOUS = [
    "/v1/chat/completions%3F",
    "/v1/chat/completions%3Fx=1",
    "/v1/chat/completions%23",
    "/v1/chat%2Fcompletions",
    "/v1/files/%2e%2e/chat/completions",
    "/v1/files/../chat/completions",
    "/v1/files/./x",
    "/v1/files/%2E%2E",
    "/v1//chat/completions",
    "/v1/chat/completions/",
    "/v1/chat/completions%00",
    "/v1/chat/completions%0d%0a",
    "/v1/chat/completions%20",
    "/v1/chat/completions%5c",
    "/v1/chat/completions%25",
    "/v1/chat/completions%2",
    "/v1/chat/completions%zz",
    "/v1/chat/completions%C3%A9",
    "/v1/chat/completions;x=1",
]


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_ambiguous_paths_are_refused_before_the_upstream(gw, fake, target):
    status, headers, body = raw_http(gw.base_url, "POST", target, auth(gw), orjson.dumps(CHAT))
    assert status in (400, 404), (target, status, body)
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if status == 400:
        assert err["code"] == "invalid_path" and "Invalid request path" in err["message"]
    assert headers["x-keyplane-request-id"].startswith("req_")
    assert fake.model_requests() == []
    assert gw.extra["settled"] == []


@pytest.mark.parametrize("method", ["PUT", "PATCH", "TRACE", "FOO"])
def test_methods_the_api_does_not_use_are_refused(gw, fake, method):
    status, _, body = raw_http(gw.base_url, method, "/v1/chat/completions", auth(gw), orjson.dumps(CHAT))
    assert status in (400, 405), body
    assert fake.model_requests() == []


def test_model_deletion_is_not_proxied(gw, fake):
    r = httpx.delete(gw.v1 + "/models/ft:gpt-4o-mini:acme:team-b:AbC123", headers=auth(gw))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert fake.model_requests() == []


def test_canonical_path_is_what_is_authorized_metered_and_forwarded(gw, fake):
    # An unreserved character written as an escape is the same path everywhere.
    status, _, body = raw_http(gw.base_url, "POST", "/v1/chat/%63ompletions", auth(gw), orjson.dumps(CHAT))
    assert status == 200, body
    (rec,) = fake.model_requests()
    assert rec.path == "/v1/chat/completions"
    (ctx,) = gw.extra["settled"]
    assert ctx.endpoint == "/v1/chat/completions" and ctx.completion_tokens == 5 and ctx.spending


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
def test_model_requests_are_metered_whatever_the_content_type(gw, fake, ctype):
    h = {**auth(gw), "Content-Type": ctype} if ctype else {"Authorization": f"Bearer {gw.api_key}"}
    status, _, body = raw_http(gw.base_url, "POST", "/v1/chat/completions", h, orjson.dumps(CHAT))
    assert status == 200, body
    (ctx,) = gw.extra["settled"]
    assert ctx.model == "gpt-4o-mini" and ctx.completion_tokens == 5 and ctx.max_tokens == 5


def test_compressed_bodies_are_refused_on_spending_endpoints(gw, fake):
    h = {**auth(gw), "Content-Encoding": "gzip"}
    status, _, body = raw_http(gw.base_url, "POST", "/v1/chat/completions", h, orjson.dumps(CHAT))
    assert status == 400 and orjson.loads(body)["error"]["code"] == "unsupported_encoding"
    assert fake.model_requests() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", -(10**6)),
        ("max_tokens", 10**7),
        ("max_tokens", 10**30),
        ("max_completion_tokens", 0),
        ("max_output_tokens", -5),
        ("n", 0),
        ("n", -3),
        ("n", 10**6),
    ],
)
def test_output_limits_and_choices_are_validated_before_admission(gw, fake, field, value):
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG, extra_body={field: value})
    assert e.value.code in ("invalid_value", "invalid_type") and e.value.param == field
    assert fake.model_requests() == []


def test_the_output_limit_is_the_field_the_endpoint_reads(gw, fake):
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    # /v1/responses reads max_output_tokens; a max_tokens there limits nothing.
    c.responses.create(model="gpt-4o-mini", input="hi", extra_body={"max_tokens": 1})
    c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=3, max_completion_tokens=50)
    first, second = gw.extra["settled"]
    # no limit the upstream reads: admission reserves the model's maximum, and gives it to the upstream
    most = output_limit(gw, "gpt-4o-mini")
    assert first.max_tokens == most
    responses, chat = (orjson.loads(r.body) for r in fake.model_requests())
    assert responses["max_output_tokens"] == most and responses["max_tokens"] == 1
    assert second.max_tokens == 50  # the larger of the two chat limits
    assert "max_output_tokens" not in chat and (chat["max_tokens"], chat["max_completion_tokens"]) == (3, 50)


def test_background_responses_are_refused(gw, fake):
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="gpt-4o-mini", input="hi", background=True)
    assert e.value.param == "background"
    assert fake.model_requests() == []


def test_deeply_nested_json_is_a_400_not_a_traceback(gw, fake):
    deep = b'{"model":"gpt-4o-mini","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for path in ("/v1/chat/completions", "/v1/images/generations", "/v1/files"):
        r = httpx.post(gw.v1 + path[3:], content=deep, headers=auth(gw), timeout=30)
        assert r.status_code in (400, 404), (path, r.text)
        assert "Traceback" not in r.text and r.json()["error"]["type"] == "invalid_request_error"
    assert fake.model_requests() == []


def test_too_many_headers_are_refused(gw, fake):
    h = {**auth(gw), **{f"x-pad-{i}": "v" for i in range(200)}}
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=h)
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert fake.model_requests() == []


def test_method_override_and_rewrite_headers_are_not_forwarded(gw, fake):
    h = {
        **auth(gw),
        "X-HTTP-Method-Override": "DELETE",
        "X-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Original-URL": "/v1/chat/completions",
        "X-Rewrite-URL": "/v1/chat/completions",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "host=evil.example",
    }
    r = httpx.get(gw.v1 + "/files", headers=h)
    assert r.status_code == 200, r.text
    (rec,) = fake.model_requests()
    assert not any(
        k.lower().startswith(("x-http-method", "x-method", "x-original", "x-rewrite", "x-forwarded", "forwarded"))
        for k in rec.headers
    )


def test_upstream_credential_is_redacted_from_relayed_errors(gw, fake):
    fake.push(
        Behaviour(
            status=401,
            error_body=orjson.dumps(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {UPSTREAM_KEY}.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
            ).decode(),
        )
    )
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(gw))
    assert r.status_code == 401
    assert UPSTREAM_KEY not in r.text and UPSTREAM_KEY[:8] in r.text


def test_auth_errors_never_echo_the_start_of_a_key(gw):
    secret = "Zk9sQ2xhbmRlc3RpbmVLZXk"
    r = httpx.get(gw.v1 + "/models", headers={"Authorization": secret})
    assert r.status_code == 401 and secret[:6] not in r.text
    r = httpx.get(gw.v1 + "/models", headers={"Authorization": "Token abc"})
    assert "`Token`" in r.json()["error"]["message"]


def test_every_answer_of_keyplane_carries_its_request_id(gw, fake):
    restricted = new_key(gw, ["api.files.read"])["value"]
    answers = [
        httpx.get(gw.v1 + "/models", headers=auth(gw)),  # answered by keyplane itself
        httpx.get(gw.v1 + "/models"),  # 401
        httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {restricted}"}),
        httpx.get(gw.v1 + "/nothing-here", headers=auth(gw)),  # 404
    ]
    assert [r.status_code for r in answers] == [200, 401, 403, 404]
    for r in answers:
        assert r.headers["x-keyplane-request-id"].startswith("req_"), r.status_code


def test_logged_paths_and_models_cannot_forge_lines(gw, fake, caplog):
    from keyplane import logs

    assert "\n" not in logs.safe("/v1/x\r\n2026-01-01 INFO forged") and "\\x0a" in logs.safe("a\nb")


def _archive(gw) -> None:
    admin(gw, "POST", f"/projects/{gw.project_id}/archive")


@pytest.fixture
def own_project(gw):
    """A project of its own (archiving the shared module's default project would break other tests)."""
    p = admin(gw, "POST", "/projects", {"name": f"p-{len(gw.extra['settled'])}-{id(object())}"})
    k = admin(gw, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})
    return p["id"], k["value"]


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
def test_model_streams_end_when_the_project_is_archived(gw, fake, own_project, path):
    pid, key = own_project
    fake.default = Behaviour(chunk_delay=0.05, text=" ".join(["word"] * 200))
    c = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    if path == "/chat/completions":
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    else:
        stream = c.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    got = 0
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            got += 1
            if got == 3:
                admin(gw, "POST", f"/projects/{pid}/archive")
    assert "archived" in str(e.value.message)
    wait_for(lambda: gw.extra["settled"])
    (ctx,) = gw.extra["settled"]
    assert ctx.error == "project_archived" and ctx.completion_tokens < 200


def test_passthrough_streams_end_when_the_key_is_revoked(gw, fake, own_project):
    """The pass-through relay (GET /v1/responses/{id} streams SSE) cuts too, not only the model relay."""
    pid, key = own_project
    (k,) = admin(gw, "GET", f"/projects/{pid}/api_keys")["data"]
    fake.default = Behaviour(chunk_delay=0.05, text=" ".join(["word"] * 200))
    # A response of this project's own: another's (or an unknown id) is refused (proxy/tenancy.py).
    rid = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0).responses.create(model="gpt-4o-mini", input="hi").id

    async def go() -> bytes:
        out = b""
        async with (
            httpx.AsyncClient(timeout=30) as h,
            h.stream("GET", f"{gw.v1}/responses/{rid}", headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                out += chunk
                if out.count(b"\n\n") == 3:
                    await asyncio.to_thread(admin, gw, "DELETE", f"/projects/{pid}/api_keys/{k['id']}")
        return out

    out = asyncio.run(go())
    assert b"has been revoked" in out
    assert out.count(b"response.output_text.delta") < 100


def test_responses_stream_is_recorded_before_the_terminal_event(gw, fake):
    seen_settled_at_completion: list[bool] = []
    c = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    for event in c.responses.create(model="gpt-4o-mini", input="hi", stream=True):
        if event.type == "response.completed":
            seen_settled_at_completion.append(bool(gw.extra["settled"]))
    assert seen_settled_at_completion == [True]
