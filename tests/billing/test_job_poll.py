"""The fine-tuning jobs and eval runs a stopped key started are cancelled at the provider by billing's background
poll (billing/job_poll.py), on SQLite and PostgreSQL, through the official SDK: once, audited; a cancel the upstream
did not take is sent again and a 4xx is final; an active key's job runs on, and a finished one is polled no more.

The fake upstream's jobs and runs stay as created (``validating_files``, ``queued``) until a test moves them on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from openai import OpenAI

from keyplane.billing.batch_poll import stop_reason
from keyplane.testing import FakeUpstream
from keyplane.testing.fake_upstream import Behaviour
from tests.billing.conftest import admin_http, billing_of, config, new_key
from tests.support import Gateways, RunningServer

FT_BASE = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def gateway(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[RunningServer]:
    """keyplane routed to the fake upstream (in-process limiter), on SQLite and PostgreSQL."""
    yield gateways.start(config(fake), store=database_url)
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


def _key(srv: RunningServer) -> tuple[str, OpenAI]:
    """A new key of the project: (its id, a client with it)."""
    k = new_key(srv, "jobs")
    return k["id"], OpenAI(base_url=srv.v1, api_key=k["value"], max_retries=0)


def _job(c: OpenAI) -> str:
    f = c.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    return c.fine_tuning.jobs.create(model=FT_BASE, training_file=f.id).id


def _stop(srv: RunningServer, key_id: str, how: str) -> None:
    """Revoke or suspend a key, and wait until this instance's snapshot has it."""
    with admin_http(srv) as h:
        base = f"/projects/{srv.project_id}/api_keys/{key_id}"
        r = h.delete(base) if how == "revoke" else h.post(base + "/suspend", json={"reason": "leak"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while stop_reason(srv.app.runtime, key_id, srv.project_id) is None:
        assert time.monotonic() < deadline, "the snapshot never saw the key stopped"
        time.sleep(0.05)


def _poll(srv: RunningServer) -> None:
    """Billing's background step, as if POLL_SECONDS had gone by since the last retrieval of each job."""
    batches = srv.app.runtime.features.batches
    batches.jobs.polled.clear()
    srv.call(batches.poll(min_age=0))


def _created(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _sent(fake: FakeUpstream, method: str, path: str) -> int:
    return sum(1 for r in fake.requests if r.method == method and r.path == path)


def _audited(srv: RunningServer, event: str) -> list[dict]:
    with admin_http(srv) as h:
        r = h.get("/audit_logs", params={"event_types[]": event})
        assert r.status_code == 200, r.text
        return r.json()["data"]


def test_a_revoked_keys_eval_run_is_cancelled_once_and_audited(gateway, fake):
    kid, c = _key(gateway)
    # The SDK's evals resource warns of the Evals API's deprecation (warnings are errors here): raw calls.
    ev = _created(
        c.post(
            "/evals",
            cast_to=httpx.Response,
            body={
                "name": "e",
                "data_source_config": {"type": "custom", "item_schema": {"type": "object", "properties": {}}},
                "testing_criteria": [
                    {"type": "string_check", "name": "s", "input": "{{item.a}}", "reference": "x", "operation": "eq"}
                ],
            },
        )
    )
    run = _created(
        c.post(
            f"/evals/{ev}/runs",
            cast_to=httpx.Response,
            body={"name": "r", "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": []}}},
        )
    )
    runs = fake.objects.jobs.runs
    _poll(gateway)
    assert runs[run]["status"] == "queued"  # an active key's run goes on
    _stop(gateway, kid, "revoke")
    _poll(gateway)
    assert runs[run]["status"] == "canceled"
    path = f"/v1/evals/{ev}/runs/{run}"
    retrieved = _sent(fake, "GET", path)
    _poll(gateway)
    _poll(gateway)
    assert _sent(fake, "POST", path + "/cancel") == 1
    assert _sent(fake, "GET", path) == retrieved  # the cancel answered `canceled`: done, no longer polled
    [entry] = _audited(gateway, "eval.run.cancelled")
    details = orjson.dumps(entry).decode()
    assert run in details and ev in details and kid in details, entry


def test_a_cancel_the_upstream_did_not_take_is_sent_again(gateway, fake):
    kid, c = _key(gateway)
    job = _job(c)
    jobs = fake.objects.jobs.fine_tuning
    _stop(gateway, kid, "suspend")
    fake.push(Behaviour(status=503))  # the first call of the next poll: the cancel
    _poll(gateway)
    assert jobs[job]["status"] == "validating_files"
    assert _audited(gateway, "fine_tuning.job.cancelled") == []
    _poll(gateway)
    assert jobs[job]["status"] == "cancelled"
    assert _sent(fake, "POST", f"/v1/fine_tuning/jobs/{job}/cancel") == 2
    assert len(_audited(gateway, "fine_tuning.job.cancelled")) == 1


def test_a_cancel_refused_with_a_4xx_is_final(gateway, fake):
    """A job that finished at the provider before the poll saw it (its cancel answers 400) is asked once."""
    kid, c = _key(gateway)
    job = _job(c)
    fake.objects.jobs.fine_tuning[job]["status"] = "succeeded"
    _stop(gateway, kid, "revoke")
    for _ in range(3):
        _poll(gateway)
    assert _sent(fake, "POST", f"/v1/fine_tuning/jobs/{job}/cancel") == 1
    assert _sent(fake, "GET", f"/v1/fine_tuning/jobs/{job}") == 0  # done with it at the cancel's answer
    assert _audited(gateway, "fine_tuning.job.cancelled") == []


def test_an_active_keys_job_runs_on_and_a_finished_one_is_polled_no_more(gateway, fake):
    _, c = _key(gateway)
    job = _job(c)
    path = f"/v1/fine_tuning/jobs/{job}"
    _poll(gateway)
    assert fake.objects.jobs.fine_tuning[job]["status"] == "validating_files"
    assert (_sent(fake, "POST", path + "/cancel"), _sent(fake, "GET", path)) == (0, 1)
    # Its row in batch_costs is no batch: nothing metered, nothing held again when the counters are rebuilt.
    assert gateway.call(gateway.app.runtime.features.batches.poll(min_age=0)) == 0
    assert gateway.call(billing_of(gateway).hold_batches()) == 0
    fake.objects.jobs.fine_tuning[job]["status"] = "succeeded"
    _poll(gateway)
    assert _sent(fake, "GET", path) == 2  # seen terminal: done
    _poll(gateway)
    assert _sent(fake, "GET", path) == 2
    assert _sent(fake, "POST", path + "/cancel") == 0


def test_a_job_keyplane_cannot_keep_is_cancelled_at_once(gateway, fake, monkeypatch):
    """The store refuses the row that ties a new job to its key: no poll could cancel that job once the key is
    stopped, so it is cancelled at once and the call fails (fail closed), instead of a job that outlives a
    revocation."""
    _, c = _key(gateway)
    jobs = gateway.app.runtime.features.batches.jobs

    async def refused(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError("the store is down")

    monkeypatch.setattr(jobs, "started", refused)
    f = c.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    with pytest.raises(Exception) as e:
        c.fine_tuning.jobs.create(model=FT_BASE, training_file=f.id)
    assert getattr(e.value, "status_code", None) == 503, e.value
    [job] = [j for j in fake.objects.jobs.fine_tuning.values() if j["training_file"] == f.id]
    assert job["status"] == "cancelled"
