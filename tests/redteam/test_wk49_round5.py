"""Week 49 red-team review, round 5: service tiers, project roles, realtime, batches, caching and the admin
API's project routes. Each test failed while its hole was open (tests/redteam/conftest.py: the gateway on the
fake upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from tests.proxy.conftest import admin


def _project(srv) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A new project and an all-permissions key of it: (project id, key)."""
    p = admin(srv, "POST", "/projects", {"name": f"p-{time.monotonic_ns()}"})
    return p["id"], admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})["value"]


def _client(srv, key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=srv.v1, api_key=key, max_retries=0)


def _spent(srv, project_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return srv.call(srv.app.runtime.features.billing.spent("project", project_id))  # type: ignore[no-any-return]


def _limit(srv, project_id: str, cents: int) -> None:  # type: ignore[no-untyped-def]
    admin(
        srv,
        "POST",
        f"/projects/{project_id}/spend_limit",
        {"currency": "USD", "interval": "month", "threshold_amount": cents},
    )


# --- service tiers ------------------------------------------------------------------------------


def test_an_escaped_service_tier_key_is_priced_at_its_tier(make_gw, fake):
    """The service tier was read only when the body held the bytes `"service_tier"`: the same key written with a
    JSON escape (`"service\\u005ftier": "priority"`) is the priority tier to the provider (any JSON parser
    unescapes it, and it bills at about twice the standard rates), yet keyplane reserved and billed it at 1x,
    so a key spent up to twice its hard limit."""
    srv = make_gw()
    _limit(srv, srv.project_id, 1)  # 10000 micro-dollars: 5 tokens at 1x (8000) fit, at 2x (16000) not
    base = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    h = {"Authorization": f"Bearer {srv.api_key}", "Content-Type": "application/json"}
    plain = orjson.dumps({**base, "service_tier": "priority"})
    r = httpx.post(srv.v1 + "/chat/completions", content=plain, headers=h, timeout=30)
    assert r.status_code == 429, r.text  # the priority tier at 2x does not fit
    seen = len(fake.model_requests())
    for spelled in (b'"service\\u005ftier"', b'"\\u0073ervice_tier"', b'"service_\\u0074ier"'):
        body = plain.replace(b'"service_tier"', spelled)
        assert orjson.loads(body)["service_tier"] == "priority"
        r = httpx.post(srv.v1 + "/chat/completions", content=body, headers=h, timeout=30)
        assert r.status_code == 429, f"{spelled!r}: the priority tier admitted at the standard price ({r.text[:200]})"
    # A body keyplane's parsers refuse (a lone surrogate) but a lenient one reads: not priced at 1x either.
    body = plain.replace(b'"hi"', b'"\\ud800"')
    r = httpx.post(srv.v1 + "/chat/completions", content=body, headers=h, timeout=30)
    assert r.status_code in (400, 429), r.text
    assert len(fake.model_requests()) == seen
    r = httpx.post(srv.v1 + "/chat/completions", content=orjson.dumps(base), headers=h, timeout=30)
    assert r.status_code == 200, r.text  # the standard tier still fits


# --- batches: an input file made through the Uploads API --------------------------------------------------


def _with_uploads(fake) -> None:  # type: ignore[no-untyped-def]
    """The fake upstream answering the Uploads API (create, add a part, complete into a file), as the provider."""
    objects = fake.objects
    answer = objects.answer
    uploads: dict[str, dict] = {}
    parts: dict[str, bytes] = {}

    def with_uploads(method: str, path: str, body: bytes):  # type: ignore[no-untyped-def]
        seg = path.split("/")[2:]
        if not seg or seg[0] != "uploads" or method != "POST":
            return answer(method, path, body)
        if len(seg) == 1:
            req = orjson.loads(body)
            up = {"id": f"upload_{len(uploads) + 1}", "object": "upload", "status": "pending", **req}
            up["created_at"], up["expires_at"] = int(time.time()), int(time.time()) + 3600
            uploads[up["id"]] = up
            return 200, up
        up = uploads[seg[1]]
        if seg[2] == "parts":
            pid = f"part_{len(parts) + 1}"
            start = body.index(b"\r\n\r\n") + 4
            parts[pid] = body[start : body.rindex(b"\r\n--")]
            return 200, {"id": pid, "object": "upload.part", "upload_id": up["id"], "created_at": int(time.time())}
        f = objects._file(b"")
        f["purpose"], f["filename"] = up["purpose"], up["filename"]
        objects.files[f["id"]] = f
        objects.contents[f["id"]] = b"".join(parts[p] for p in orjson.loads(body)["part_ids"])
        up.update(status="completed", file=f)
        return 200, up

    objects.answer = with_uploads


def test_a_batch_input_file_made_by_the_uploads_api_cannot_name_another_projects_objects(make_gw, fake):
    """Held (kept so that it goes on holding): round 4 held the lines of a batch input file to the project's own
    objects, read at `POST /v1/files`. The same JSONL sent through the Uploads API (create, parts, complete) is never
    read by keyplane: were the completed upload's file recorded as an ordinary file of the project, `batches.create`
    would run it, and project B's batch would read project A's stored response at the provider. Today the file a
    completed upload makes is not B's at all (404); if it ever becomes B's, it must be as an unchecked file."""
    _with_uploads(fake)
    srv = make_gw()
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    a, b = _client(srv, key_a), _client(srv, key_b)
    resp = a.responses.create(model="gpt-4o-mini", input="secret of A", max_output_tokens=5)
    line = orjson.dumps(
        {
            "custom_id": "r-1",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": "gpt-4o-mini",
                "input": "repeat",
                "previous_response_id": resp.id,
                "max_output_tokens": 5,
            },
        }
    )
    up = b.uploads.create(bytes=len(line) + 1, filename="in.jsonl", mime_type="text/jsonl", purpose="batch")
    part = b.uploads.parts.create(up.id, data=line + b"\n")
    done = b.uploads.complete(up.id, part_ids=[part.id])
    assert done.file is not None and done.file.purpose == "batch"
    assert fake.objects.contents[done.file.id] == line + b"\n"  # the provider holds B's file, naming A's response
    before = set(fake.objects.batches)
    with pytest.raises((openai.PermissionDeniedError, openai.NotFoundError, openai.BadRequestError)):
        b.batches.create(input_file_id=done.file.id, endpoint="/v1/responses", completion_window="24h")
    ran = set(fake.objects.batches) - before
    assert not ran, "project B's batch naming project A's stored response reached the provider"


# --- fine-tuned models ------------------------------------------------------------------------------------

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:a-private:AbC123"


def _with_fine_tuning(fake, hold: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """The fake upstream's fine-tuning jobs (keyplane.testing.fake_jobs), as the provider: a job succeeds (its
    model made) when read, or (``hold``) runs until cancelled. The jobs, by id."""
    objects = fake.objects
    answer = objects.answer
    jobs: dict[str, dict] = objects.jobs.fine_tuning

    def succeeding(method: str, path: str, body: bytes):  # type: ignore[no-untyped-def]
        seg = path.split("/")[2:]
        job = jobs.get(seg[2]) if seg[:2] == ["fine_tuning", "jobs"] and len(seg) == 3 else None
        if job is not None and method == "GET" and not hold and job["status"] == "validating_files":
            job.update(status="succeeded", fine_tuned_model=FT_MODEL, finished_at=int(time.time()))
        return answer(method, path, body)

    objects.answer = succeeding
    return jobs


def test_a_fine_tuned_model_is_its_projects_own(make_gw, fake):
    """A fine-tuning job is project A's (its id and result files are checked on every path), but the model it makes
    was not: under the shared provider key, project B's key ran chat completions on A's fine-tuned model (trained
    on A's private data, able to repeat it) and on its checkpoints, fine-tuned it further, and read it, as if it
    were a public model."""
    from tests.billing.conftest import config

    _with_fine_tuning(fake)
    srv = make_gw(config_text=config(fake).replace('models = ["gpt-*"', 'models = ["ft:*", "gpt-*"', 1))
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    a, b = _client(srv, key_a), _client(srv, key_b)
    f = a.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id)
    assert a.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == FT_MODEL
    msg = [{"role": "user", "content": "what were you trained on?"}]
    fb = b.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    seen = len(fake.model_requests())
    for model in (FT_MODEL, FT_MODEL + ":ckpt-step-10"):
        with pytest.raises(openai.NotFoundError) as e:
            b.chat.completions.create(model=model, max_tokens=5, messages=msg)  # type: ignore[arg-type]
        assert e.value.code == "model_not_found", e.value.body
    with pytest.raises(openai.NotFoundError):  # nor trained further by B, nor retrieved
        b.fine_tuning.jobs.create(model=FT_MODEL, training_file=fb.id)
    with pytest.raises(openai.NotFoundError):
        b.models.retrieve(FT_MODEL)
    assert len(fake.model_requests()) == seen, "project B's request on A's fine-tuned model reached the provider"
    assert a.chat.completions.create(model=FT_MODEL, max_tokens=5, messages=msg).choices  # type: ignore[arg-type]


def test_a_revoked_keys_fine_tuning_jobs_are_cancelled_at_the_provider(make_gw, fake):
    """Round 4 made revoking a key cancel the batches it started. A fine-tuning job runs at the provider for hours
    after the call that created it, billed per training token (no money control applies where no spend limit or
    credit is set, as for any unpriced call): a leaked key's jobs went on training after the key was revoked."""
    jobs = _with_fine_tuning(fake, hold=True)
    srv = make_gw()
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "leaky"})
    c = _client(srv, key["value"])
    f = c.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id)
    admin(srv, "DELETE", f"/projects/{srv.project_id}/api_keys/{key['id']}")
    batches = srv.app.runtime.features.batches
    deadline = time.monotonic() + 5
    while jobs[job.id]["status"] != "cancelled":
        assert time.monotonic() < deadline, "the revoked key's fine-tuning job still trains at the provider"
        srv.call(batches.poll(min_age=0))  # the background poll, as for batches
        time.sleep(0.2)  # poll interval (a deadline loop)


# --- input billed that admission did not count ---------------------------------------------------------------

DEAR_IN = '[prices."fake-in"]\ninput = 100\noutput = 100\nmax_output = 5\ncontext_window = 1000000\n'


def _schema(hidden: str, name: str = "id") -> dict:
    """A JSON schema whose property ``name`` carries ``hidden`` as its description."""
    return {"type": "object", "properties": {name: {"type": "string", "description": hidden}}}


def _keys_schema(hidden: str) -> dict:
    """A JSON schema whose property names carry ``hidden``."""
    step = 100
    props = {hidden[i : i + step] + str(i): {"type": "string"} for i in range(0, len(hidden), step)}
    return {"type": "object", "properties": props}


def test_input_in_tool_and_format_schemas_is_reserved(make_gw, fake):
    """Function tools and structured-output schemas are read by the model (the provider bills them as input
    tokens), but admission's count skipped the values under the keys it takes for ids and enums (`id`, `type`,
    `format`, `role`, `status`...) wherever they stood, counted no property names, and did not read the Responses
    API's `text.format` at all: 60,000 characters of schema hidden there were reserved as a few tokens, so a key
    spent far past its hard limit, one request after another or many at once."""
    srv = make_gw(DEAR_IN)
    _limit(srv, srv.project_id, 10)  # 100000 micro-dollars: ~25 tokens fit; ~15,000 tokens (~$1.50) do not
    hidden = " ".join(f"word{i}" for i in range(10_000))  # about 60,000 characters
    msg = [{"role": "user", "content": "hi"}]

    def fn(schema: dict) -> list:
        return [{"type": "function", "function": {"name": "f", "parameters": schema}}]

    def rfn(schema: dict) -> list:
        return [{"type": "function", "name": "f", "parameters": schema}]

    def fmt(schema: dict) -> dict:
        return {"format": {"type": "json_schema", "name": "out", "schema": schema}}

    chat = {"model": "fake-in", "max_tokens": 5, "messages": msg}
    resp = {"model": "fake-in", "max_output_tokens": 5, "input": "hi"}
    h = {"Authorization": f"Bearer {srv.api_key}"}
    r = httpx.post(
        srv.v1 + "/chat/completions",
        json={**chat, "messages": [{"role": "user", "content": hidden}]},
        headers=h,
        timeout=30,
    )
    assert r.status_code == 429, r.text  # the same text in a message does not fit
    seen = len(fake.model_requests())
    cases = [
        ("/chat/completions", {**chat, "tools": fn(_schema(hidden))}),
        ("/chat/completions", {**chat, "tools": fn(_schema(hidden, "format"))}),
        ("/chat/completions", {**chat, "tools": fn(_keys_schema(hidden))}),
        (
            "/chat/completions",
            {
                **chat,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "o", "schema": _schema(hidden, "type")},
                },
            },
        ),
        ("/responses", {**resp, "text": fmt(_schema(hidden, "description"))}),
        ("/responses", {**resp, "text": fmt(_keys_schema(hidden))}),
        ("/responses", {**resp, "tools": rfn(_schema(hidden, "status"))}),
    ]
    admitted = []
    for i, (path, body) in enumerate(cases):
        r = httpx.post(srv.v1 + path, json=body, headers=h, timeout=30)
        if r.status_code != 429:
            admitted.append((i, r.status_code))
    assert admitted == [], f"requests whose schemas are billed as ~15,000 input tokens were admitted: {admitted}"
    assert len(fake.model_requests()) == seen
    r = httpx.post(
        srv.v1 + "/chat/completions", json={**chat, "tools": fn(_schema("a small tool"))}, headers=h, timeout=30
    )
    assert r.status_code == 200, r.text  # a small tool still fits


def test_a_response_served_at_the_priority_tier_is_billed_at_it(make_gw, fake, monkeypatch):
    """A request that names no tier (or `auto`) is served at the provider project's default tier, which an
    administrator may have set to priority (about twice the standard rates); the answer says which tier served it
    (`service_tier`). keyplane priced and billed every such request at the standard rates, so the ledger (and
    the spend limits and credit it feeds) counted half of what the provider billed."""
    from keyplane.testing import answers

    chat = answers.chat

    def priority(*a, **k):  # type: ignore[no-untyped-def]
        return {**chat(*a, **k), "service_tier": "priority"}

    monkeypatch.setattr(answers, "chat", priority)
    srv = make_gw()
    c = _client(srv, srv.api_key)
    r = c.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert r.service_tier == "priority"
    deadline = time.monotonic() + 5
    while _spent(srv, srv.project_id)[1] and time.monotonic() < deadline:  # settled
        time.sleep(0.05)  # poll interval (a deadline loop)
    # gpt-4o-mini's priority factor is 1.67 (prices.toml [service_tiers.priority]): 5 tokens at 2672 each.
    assert _spent(srv, srv.project_id)[0] == PRIORITY, "a priority-tier answer billed at the standard price (8000)"


# gpt-4o-mini, 5 output tokens (tests/billing/conftest.py): 8000 micro-dollars at the standard tier, at flex 0.5x,
# at priority 1.67x. A spend limit of 1 cent (10000) admits a standard request and refuses a priority one.
STANDARD, FLEX, PRIORITY = 8000, 4000, 13360


def _project_default(monkeypatch, tier: str) -> None:  # type: ignore[no-untyped-def]
    """The fake upstream's provider project serves a request naming no tier (or `auto`) at ``tier``, in every
    answer: chat (and each chunk of its stream), Responses (and its stream's response.completed)."""
    from keyplane.testing import answers

    asked = answers.served_tier
    monkeypatch.setattr(
        answers, "served_tier", lambda req: tier if req.get("service_tier") in (None, "auto") else asked(req)
    )


def _settled(srv, project_id: str) -> int:  # type: ignore[no-untyped-def]
    """What a project spent once nothing is reserved any more (the last request settled)."""
    deadline = time.monotonic() + 5
    while _spent(srv, project_id)[1] and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval (a deadline loop)
    return _spent(srv, project_id)[0]


def test_a_streamed_chat_answer_at_the_priority_tier_is_billed_at_it(make_gw, fake, monkeypatch):
    """Each chunk of a chat stream says the tier that served it (the usage chunk included): a stream served at
    the project's default priority tier was billed at the standard price."""
    _project_default(monkeypatch, "priority")
    srv = make_gw()
    c = _client(srv, srv.api_key)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", max_tokens=5, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    )
    assert chunks[0].service_tier == "priority"
    assert _settled(srv, srv.project_id) == PRIORITY


def test_an_answer_at_a_cheaper_tier_than_asked_is_billed_at_it(make_gw, fake, monkeypatch):
    """Both directions: a Responses answer (whole or streamed: response.completed) served at flex is billed at
    flex, and a priority request the provider serves at `default` at the standard price."""
    _project_default(monkeypatch, "flex")
    srv = make_gw()
    c = _client(srv, srv.api_key)
    r = c.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5)
    assert r.service_tier == "flex"
    assert _settled(srv, srv.project_id) == FLEX
    events = list(c.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.service_tier == "flex"
    assert _settled(srv, srv.project_id) == 2 * FLEX
    from keyplane.testing import answers

    monkeypatch.setattr(answers, "served_tier", lambda req: "default")  # priority asked, not granted
    r = c.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5, service_tier="priority")
    assert r.service_tier == "default"
    assert _settled(srv, srv.project_id) == 2 * FLEX + STANDARD


def test_after_a_priority_answer_a_request_naming_no_tier_is_reserved_at_priority(make_gw, fake, monkeypatch):
    """Reserving at the standard price a request the upstream then serves at priority takes a hard limit past
    itself by the difference: once an upstream answered one request naming no tier at priority, the next ones
    to it are reserved at priority (any project's), and a limit that holds a standard request refuses them."""
    _project_default(monkeypatch, "priority")
    srv = make_gw()
    hi = [{"role": "user", "content": "hi"}]
    _client(srv, srv.api_key).chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=hi)
    assert _settled(srv, srv.project_id) == PRIORITY
    pid, key = _project(srv)
    _limit(srv, pid, 1)  # 10000: a standard request (8000) fits, a priority one (13360) not
    c = _client(srv, key)
    seen = len(fake.model_requests())
    for tier in (None, "auto"):
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(
                model="gpt-4o-mini", max_tokens=5, messages=hi, **({"service_tier": tier} if tier else {})
            )
        assert e.value.code == "project_spend_limit_exceeded"
    assert len(fake.model_requests()) == seen
    r = c.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=hi, service_tier="default")
    assert r.service_tier == "default"
    assert _settled(srv, pid) == STANDARD


def test_an_upstream_set_to_the_priority_tier_reserves_at_it_from_the_start(make_gw, fake, monkeypatch):
    """`service_tier = "priority"` on an upstream: its requests naming no tier are reserved at priority before
    any answer said so (no first request past the limit). A tier the price table does not price is refused."""
    from keyplane.config import ConfigError
    from tests.billing.conftest import config

    _project_default(monkeypatch, "priority")
    text = config(fake).replace("max_retries = 2\n", 'max_retries = 2\nservice_tier = "priority"\n', 1)
    srv = make_gw(config_text=text)
    _limit(srv, srv.project_id, 1)
    c = _client(srv, srv.api_key)
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=hi)
    assert e.value.code == "project_spend_limit_exceeded"
    assert fake.model_requests() == []
    c.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=hi, service_tier="flex")
    assert _settled(srv, srv.project_id) == FLEX
    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.service_tier: `turbo` is not a tier"):
        make_gw(config_text=text.replace('"priority"', '"turbo"', 1))


def test_a_batch_line_cannot_run_another_projects_fine_tuned_model(make_gw, fake):
    """The same as test_a_fine_tuned_model_is_its_projects_own, in a batch: the lines of an input file are held to
    the model permissions, but not to the owner of the fine-tuned models they name."""
    from tests.billing.conftest import config

    _with_fine_tuning(fake)
    srv = make_gw(config_text=config(fake).replace('models = ["gpt-*"', 'models = ["ft:*", "gpt-*"', 1))
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    a, b = _client(srv, key_a), _client(srv, key_b)
    f = a.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    assert a.fine_tuning.jobs.retrieve(a.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id).id)
    body = {"model": FT_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "what do you know?"}]}
    fb = b.files.create(
        file=(
            "in.jsonl",
            orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}),
        ),
        purpose="batch",
    )
    before = set(fake.objects.batches)
    with pytest.raises((openai.NotFoundError, openai.PermissionDeniedError)):
        b.batches.create(input_file_id=fb.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert set(fake.objects.batches) == before
