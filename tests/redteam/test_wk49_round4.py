"""Week 49 red-team review, round 4: batches and files, provider key bindings, custom and project roles, and the
/v1 path's shapes. Each test failed while its hole was open (tests/redteam/conftest.py: the gateway on the fake
upstream, PRICED gpt-4o-mini: $0 input, $1600 per 1M output tokens, in-process limiter)."""

from __future__ import annotations

import contextlib
import time

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from tests.providers.conftest import fake_provider  # noqa: F401 - the fixture
from tests.proxy.conftest import admin
from tests.support import init_org, make_settings, start_server


def _project(srv) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A new project and an all-permissions key of it: (project id, key)."""
    p = admin(srv, "POST", "/projects", {"name": f"p-{time.monotonic_ns()}"})
    return p["id"], admin(srv, "POST", f"/projects/{p['id']}/api_keys", {"name": "k"})["value"]


def _client(srv, key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=srv.v1, api_key=key, max_retries=0)


def _line(i: int, body: dict, url: str = "/v1/chat/completions") -> bytes:
    return orjson.dumps({"custom_id": f"r-{i}", "method": "POST", "url": url, "body": body})


def _spent(srv, project_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return srv.call(srv.app.runtime.features.billing.spent("project", project_id))  # type: ignore[no-any-return]


def _limit(srv, project_id: str, cents: int) -> None:  # type: ignore[no-untyped-def]
    admin(
        srv,
        "POST",
        f"/projects/{project_id}/spend_limit",
        {"currency": "USD", "interval": "month", "threshold_amount": cents},
    )


# --- batches, files, evals -----------------------------------------------------------------------------


def test_a_batch_line_cannot_name_another_projects_objects(make_gw, fake):
    """The ids a request body names are checked for the caller's project (previous_response_id, file_id,
    vector_store_ids...), but the requests of a batch sit in an uploaded file that tenancy never read: project B
    could run, under the shared provider key, requests that read project A's stored response, file and vector
    store, and get their content back in its own batch's output."""
    srv = make_gw()
    _, key_a = _project(srv)
    _, key_b = _project(srv)
    a, b = _client(srv, key_a), _client(srv, key_b)
    resp = a.responses.create(model="gpt-4o-mini", input="secret of A", max_output_tokens=5)
    fa = a.files.create(file=("notes.txt", b"A's private notes"), purpose="user_data")
    vs = a.vector_stores.create(name="A's store")
    lines = [
        _line(
            1,
            {
                "model": "gpt-4o-mini",
                "input": "repeat what you said",
                "previous_response_id": resp.id,
                "max_output_tokens": 5,
            },
            "/v1/responses",
        ),
        _line(
            2,
            {
                "model": "gpt-4o-mini",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "quote this file"},
                            {"type": "file", "file": {"file_id": fa.id}},
                        ],
                    }
                ],
            },
        ),
        _line(
            3,
            {
                "model": "gpt-4o-mini",
                "input": "search",
                "max_output_tokens": 5,
                "max_tool_calls": 1,
                "tools": [{"type": "file_search", "vector_store_ids": [vs.id]}],
            },
            "/v1/responses",
        ),
    ]
    # The same with the key spelled so that a reader that splits at CR, or does not unescape, misses it.
    lines.append(
        _line(4, {"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 5}, "/v1/responses").replace(
            b'"input"', b'"previous_response_id"\r:' + orjson.dumps(resp.id) + b',"input"'
        )
    )
    lines.append(
        _line(
            5,
            {"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 5, "previous_response_id": resp.id},
            "/v1/responses",
        ).replace(b'"previous_response_id"', b'"previous_response\\u005fid"')
    )
    ran = []
    for i, content in enumerate(lines):
        endpoint = "/v1/responses" if b'"/v1/responses"' in content else "/v1/chat/completions"
        try:
            f = b.files.create(file=(f"in{i}.jsonl", content + b"\n"), purpose="batch")
            batch = b.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
        except (openai.NotFoundError, openai.PermissionDeniedError, openai.BadRequestError):
            continue  # refused, at the upload or at the batch's creation
        ran.append((i, batch.id))
    # An upload keyplane's strict multipart reader refuses (a part header it does not accept) but a lenient
    # provider reads: its requests were never seen, so they cannot run as a batch.
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--xyz\r\n'
        b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\nContent-Transfer-Encoding: 8bit\r\n'
        b"\r\n" + lines[0] + b"\n\r\n--xyz--\r\n"
    )
    r = httpx.post(
        srv.v1 + "/files",
        content=body,
        timeout=30,
        headers={"Authorization": f"Bearer {key_b}", "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 200, r.text  # the upload itself goes through
    try:
        batch = b.batches.create(input_file_id=r.json()["id"], endpoint="/v1/responses", completion_window="24h")
        ran.append((99, batch.id))
    except openai.PermissionDeniedError as e:
        assert e.code == "batch_input_unchecked", e.body
    assert ran == [], f"project B's batches naming project A's objects reached the provider: {ran}"
    # A's own batch naming its own objects still runs.
    f = a.files.create(file=("own.jsonl", b"\n".join(lines[:2]) + b"\n"), purpose="batch")
    assert a.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h").id


def test_an_eval_run_cannot_read_another_projects_data(make_gw, fake):
    """An eval run's data source names a file as `{"type": "file_id", "id": ...}` (no `file_id` key for the
    ownership check to see), or reads stored chat completions or stored responses by query
    (`stored_completions`, `responses`: everything stored under the provider key, every project's): project B's
    eval run ran over project A's file and A's stored conversations, the items and answers in B's run output."""
    from keyplane.store.models import ProviderObject

    srv = make_gw()
    _, key_a = _project(srv)
    pb, key_b = _project(srv)
    fa = _client(srv, key_a).files.create(file=("items.jsonl", b'{"item": {"q": "A secret"}}\n'), purpose="evals")
    store = srv.app.runtime.features.proxy.tenancy.store  # B's own eval (the fake has no evals API)
    srv.call(store.record([ProviderObject(id="eval_b1", project_id=pb, object="eval", upstream="fake", created_at=0)]))
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]}
    sources = [
        {"type": "jsonl", "source": {"type": "file_id", "id": fa.id}},
        {
            "type": "completions",
            "model": "gpt-4o-mini",
            "input_messages": template,
            "source": {"type": "file_id", "id": fa.id},
        },
        {
            "type": "completions",
            "model": "gpt-4o-mini",
            "source": {"type": "stored_completions", "limit": 1000},
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
        },
        {
            "type": "responses",
            "model": "gpt-4o-mini",
            "input_messages": template,
            "source": {"type": "responses", "created_after": 0},
        },
    ]
    for ds in sources:
        fake.requests.clear()
        r = httpx.post(
            srv.v1 + "/evals/eval_b1/runs",
            json={"name": "r", "data_source": ds},
            timeout=30,
            headers={"Authorization": f"Bearer {key_b}"},
        )
        sent = [x.path for x in fake.model_requests() if x.path.startswith("/v1/evals")]
        assert sent == [], f"an eval run over data project B does not own reached the provider: {ds} ({r.text[:200]})"
        assert r.status_code in (403, 404), r.text
    # B's own inline items still run (reaching the fake, which has no evals API: its 404)
    r = httpx.post(
        srv.v1 + "/evals/eval_b1/runs",
        timeout=30,
        headers={"Authorization": f"Bearer {key_b}"},
        json={
            "name": "r",
            "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"q": "mine"}}]}},
        },
    )
    assert [x.path for x in fake.model_requests()][-1] == "/v1/evals/eval_b1/runs", r.text


def test_a_completions_prompt_list_is_reserved_for_every_prompt(make_gw, fake):
    """/v1/completions takes a list of prompts and writes n completions for each: reserving max_tokens x n for
    the whole list let 50 prompts (50 x 5 tokens) pass a budget with room for one (5 tokens = 8000 micro-dollars),
    synchronously or as a line of a batch."""
    srv = make_gw()
    _limit(srv, srv.project_id, 1)  # 10000 micro-dollars: one prompt of 5 tokens fits, fifty do not
    c = _client(srv, srv.api_key)
    seen = len(fake.model_requests())
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="gpt-4o-mini", prompt=[f"p{i}" for i in range(50)], max_tokens=5)
    with pytest.raises(openai.RateLimitError):  # token arrays are prompts too
        c.completions.create(model="gpt-4o-mini", prompt=[[1, 2, 3]] * 50, max_tokens=5)
    assert len(fake.model_requests()) == seen
    f = c.files.create(
        file=(
            "in.jsonl",
            _line(
                1, {"model": "gpt-4o-mini", "prompt": [f"p{i}" for i in range(50)], "max_tokens": 5}, "/v1/completions"
            ),
        ),
        purpose="batch",
    )
    with pytest.raises(openai.RateLimitError):  # 50 x 5 tokens at the batch price: 200000 > 10000
        c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    c.completions.create(model="gpt-4o-mini", prompt=["one"], max_tokens=5)  # one prompt still fits


def _assign_prompt(srv, prompt_id: str) -> None:  # type: ignore[no-untyped-def]
    """A stored prompt is made in the provider's dashboard, never through keyplane: owned by no project (refused,
    404) until the operator assigns it to one (docs/proxy.md "Assigning an object made outside keyplane")."""
    admin(srv, "POST", "/provider_objects", {"id": prompt_id, "project_id": srv.project_id})


CTX = '[prices."fake-ctx"]\ninput = 1\noutput = 1600\nmax_output = 5\ncontext_window = 100\n'


def test_a_stored_prompts_hosted_tools_are_bounded_or_refused(make_gw, fake):
    """A Responses request naming a stored prompt (`prompt: {"id": ...}`) runs the hosted tools the prompt enables
    (web search at $10-25 per 1000 calls, file search...), which the body does not show: keyplane reserved no tool
    call for it and wrote no max_tool_calls into it, so under a spend limit its searches were unbounded, in a
    synchronous call and in a batch line alike. Either bounded (max_tool_calls set and reserved) or refused."""
    srv = make_gw(CTX)
    # $20: room for keyplane's bound (each unseen tool call at the dearest hosted tool, a 64 GB container $1.92)
    _limit(srv, srv.project_id, 2000)
    _assign_prompt(srv, "pmpt_with_web_search")  # made in the provider's dashboard: the project's by assignment
    c = _client(srv, srv.api_key)
    body = {"model": "fake-ctx", "prompt": {"id": "pmpt_with_web_search"}, "input": "go", "max_output_tokens": 5}
    try:
        c.responses.create(**body)  # type: ignore[arg-type]
    except openai.PermissionDeniedError as e:
        assert e.code == "cost_not_bounded", e.body
    else:
        sent = orjson.loads(fake.model_requests()[-1].body)
        assert isinstance(sent.get("max_tool_calls"), int), "a stored prompt's tool calls went out unbounded"
    f = c.files.create(file=("in.jsonl", _line(1, body, "/v1/responses")), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):  # no max_tool_calls in the line: not bounded
        c.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")


def test_a_batch_line_with_a_stored_prompt_is_held_to_disabled_hosted_tools(make_gw, fake):
    """With a hosted tool disabled for the project, a synchronous request naming a stored prompt is refused (the
    prompt may enable the tool, keyplane cannot see it). A batch line was read for a stored prompt at the top of
    the line ({custom_id, method, url, body}), where it never stands, so the same request in a batch ran."""
    srv = make_gw(CTX)
    admin(srv, "POST", f"/projects/{srv.project_id}/hosted_tool_permissions", {"web_search": {"enabled": False}})
    _assign_prompt(srv, "pmpt_with_web_search")
    c = _client(srv, srv.api_key)
    body = {
        "model": "fake-ctx",
        "prompt": {"id": "pmpt_with_web_search"},
        "input": "go",
        "max_output_tokens": 5,
        "max_tool_calls": 1,
    }
    with pytest.raises(openai.PermissionDeniedError):
        c.responses.create(**body)  # type: ignore[arg-type]
    f = c.files.create(file=("in.jsonl", _line(1, body, "/v1/responses")), purpose="batch")
    before = len(fake.objects.batches)
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    assert e.value.code == "tool_not_permitted", e.value.body
    assert len(fake.objects.batches) == before


NOMAX = '[prices."fake-nomax"]\ninput = 1\noutput = 1600\n'  # priced, but no max_output


def test_a_batch_keyplane_could_not_bound_is_still_metered(make_gw, fake):
    """Without a spend limit, a batch whose input file keyplane could not bound (a line with no output limit for a
    model without max_output) was served and then never metered: the provider billed it, keyplane recorded
    nothing (no usage, no cost), and a spend limit set afterwards started from a total that left it out."""
    srv = make_gw(NOMAX)
    c = _client(srv, srv.api_key)
    f = c.files.create(
        file=("in.jsonl", _line(1, {"model": "fake-nomax", "messages": [{"role": "user", "content": "hi"}]})),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert c.batches.retrieve(b.id).status == "completed"
    c.files.content(b.output_file_id).read()  # type: ignore[arg-type]
    srv.call(srv.app.runtime.features.batches.poll(min_age=0))
    assert _spent(srv, srv.project_id)[0] > 0, "the batch ran at the provider and was never metered"


def test_a_revoked_keys_batches_are_cancelled_at_the_provider(make_gw, fake):
    """A batch runs at the provider for up to 24 h after the call that created it: revoking its key (a leak the
    scanner or the kill switch caught) left every batch it had started running and spending."""
    srv = make_gw()
    fake.objects.batch_status = "in_progress"
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "leaky"})
    c = _client(srv, key["value"])
    f = c.files.create(
        file=(
            "in.jsonl",
            _line(1, {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    admin(srv, "DELETE", f"/projects/{srv.project_id}/api_keys/{key['id']}")
    batches = srv.app.runtime.features.batches
    deadline = time.monotonic() + 5
    while fake.objects.batches[b.id]["status"] not in ("cancelling", "cancelled"):
        assert time.monotonic() < deadline, "the revoked key's batch still runs at the provider"
        batches.poller.polled.clear()
        srv.call(batches.poll(min_age=0))
        time.sleep(0.1)  # poll interval (a deadline loop)


def test_deleting_a_batchs_output_before_it_is_metered_does_not_erase_its_spend(make_gw, fake):
    """A batch is metered from its output file. Listing batches (which meters nothing) tells the client its
    output_file_id and makes that file its own; deleting the file before a retrieve or the background poll
    meters the batch left metering failing on every poll (404 on the content): the batch was never billed,
    and its reservation was released when its 26 h ran out, so the budget paid for it twice."""
    srv = make_gw()
    fake.objects.batch_status = "in_progress"
    c = _client(srv, srv.api_key)
    f = c.files.create(
        file=(
            "in.jsonl",
            b"\n".join(
                _line(i, {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
                for i in range(2)
            ),
        ),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    fake.objects.batches[b.id]["status"] = "completed"  # done at the provider
    listed = {x.id: x for x in c.batches.list()}[b.id]
    assert listed.status == "completed" and listed.output_file_id
    c.files.delete(listed.output_file_id)
    batches = srv.app.runtime.features.batches
    for _ in range(3):
        batches.poller.polled.clear()
        with contextlib.suppress(Exception):  # as the billing step: logged, tried again next minute
            srv.call(batches.poll(min_age=0))
    spent, held = _spent(srv, srv.project_id)
    assert spent > 0, f"the batch ran and was never billed (still held: {held})"


def test_one_batch_that_cannot_be_metered_does_not_stop_the_poll_for_the_others(make_gw, fake):
    """The background poll meters batches oldest first and gave up the whole round at the first that failed: a
    few batches whose output was deleted, created first, kept every later batch of the organization from being
    metered by the poll (until its reservation ran out, never billed)."""
    srv = make_gw()
    fake.objects.batch_status = "in_progress"
    c = _client(srv, srv.api_key)
    content = b"\n".join(
        _line(i, {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        for i in range(2)
    )
    made = []
    for _ in range(2):
        f = c.files.create(file=("in.jsonl", content), purpose="batch")
        made.append(c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"))
    for b in made:
        fake.objects.batches[b.id]["status"] = "completed"
    c.files.delete(made[0].output_file_id)  # type: ignore[arg-type]  # the older one cannot be read any more
    with contextlib.suppress(Exception):  # as the billing step: logged, tried again next minute
        srv.call(srv.app.runtime.features.batches.poll(min_age=0))
    assert _spent(srv, srv.project_id)[0] >= 8000, "the readable batch was not metered by the poll"


def test_a_running_batchs_reservation_survives_a_restart(make_gw, fake):
    """A batch's reservation is held for its 26 h window, in the limiter only: the in-process limiter starts again
    from the SQL ledger (spend), so a restart (a deploy, a crash) forgot every running batch's reservation and the
    project could spend its whole budget again on top of what its batches go on spending."""
    srv = make_gw()
    fake.objects.batch_status = "in_progress"
    _limit(srv, srv.project_id, 2)  # 20000 micro-dollars
    c = _client(srv, srv.api_key)
    f = c.files.create(
        file=(
            "in.jsonl",
            b"\n".join(
                _line(i, {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
                for i in range(2)
            ),
        ),
        purpose="batch",
    )
    c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert _spent(srv, srv.project_id) == (0, 16000)  # 2 x 10 tokens at half of $1600/M
    srv.stop()
    again = start_server(srv.settings, srv.init)
    try:
        with pytest.raises(openai.RateLimitError):  # 16000 held for the batch + 8000 > 20000
            _client(again, srv.api_key).chat.completions.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        again.stop()


# --- the /v1 path: a spending call that reaches the provider without being metered --------------------


def _slow_gw(make_gw, fake):  # type: ignore[no-untyped-def]
    from tests.billing.conftest import config

    text = config(fake, CTX).replace("max_retries = 2\n", "max_retries = 2\nread_timeout = 0.3\n", 1)
    assert "read_timeout = 0.3" in text
    return make_gw(config_text=text)


def test_a_spending_call_the_upstream_received_is_not_retried_unmetered(make_gw, fake):
    """A read timeout (or a connection broken after the request went out) was retried like a connection never
    made: the provider ran (and billed) every attempt, keyplane metered at most the last, and nothing when they all
    timed out. A slow request (a long reasoning model call, a long generation) ran up to 1 + max_retries times per
    call at no metered cost at all, past any spend limit."""
    from keyplane.testing.fake_upstream import Behaviour

    srv = _slow_gw(make_gw, fake)
    fake.push(*[Behaviour(latency=1.0)] * 3)
    c = _client(srv, srv.api_key)
    with pytest.raises(openai.APIError):
        c.chat.completions.create(model="fake-ctx", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    ran = len([r for r in fake.model_requests() if r.path == "/v1/chat/completions"])
    spent = _spent(srv, srv.project_id)[0]
    assert ran >= 1
    assert spent > 0, f"the provider received the call {ran} times (and bills it); keyplane metered nothing"


# --- provider key bindings --------------------------------------------------------------------------


def test_a_bound_project_never_falls_back_to_the_shared_key(tmp_path, fake_provider, monkeypatch):  # noqa: F811
    """A project bound to a provider project whose [[providers]] section is gone (renamed, or removed from the
    config) is logged as "its requests are refused", but UpstreamKeys.apply then compared every upstream with an
    empty base_url and let the whole pool through: the project's requests went out with the shared key, into the
    shared provider project (its objects next to every other project's)."""
    from tests.providers.test_bindings import SHARED, _config

    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    monkeypatch.setenv("KP_SHARED_KEY", SHARED)
    home = tmp_path / "home"
    settings = make_settings(home, config_text=_config(fake_provider.base_url))
    init = init_org(settings)
    srv = start_server(settings, init)
    try:
        admin(srv, "POST", "/providers/bindings", {"project_id": srv.project_id, "provider_project_id": "proj_web"})
    finally:
        srv.stop()
    # The provider's section renamed: the binding names a provider keyplane no longer knows.
    text = _config(fake_provider.base_url).replace('name = "acme"', 'name = "acme-renamed"')
    srv = start_server(make_settings(home, config_text=text), init)
    try:
        with pytest.raises(openai.APIStatusError):
            _client(srv, srv.api_key).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        srv.stop()
    assert ("shared", "gpt-4o") not in fake_provider.fake.model_calls


def test_a_bound_projects_key_goes_to_its_provider_however_the_url_is_spelled():
    """The swap compared base_url strings: a provider written `https://API.openai.com:443/v1/` and an upstream
    `https://api.openai.com/v1` are one API, yet the bound project's requests there kept the shared key."""
    from keyplane.config import ProviderSection
    from keyplane.providers.bindings import KeyBox, UpstreamKeys
    from tests.providers.test_bindings import _dep

    box = KeyBox(b"s" * 32)
    keys = UpstreamKeys(
        [ProviderSection(name="acme", base_url="https://API.openai.com:443/v1/", admin_key_env="K")], box
    )

    class _Row:
        project_id, provider, key_sealed = "proj_a", "acme", box.seal("sk-own")

    class _Session:
        async def execute(self, _stmt):  # type: ignore[no-untyped-def]
            class R:
                def scalars(self):  # type: ignore[no-untyped-def]
                    return [_Row()]

            return R()

    import asyncio

    asyncio.run(keys.reload(_Session()))  # type: ignore[arg-type]
    out = keys.apply("proj_a", (_dep("openai", "https://api.openai.com/v1"),))
    assert [d.api_key for d in out] == ["sk-own"]
