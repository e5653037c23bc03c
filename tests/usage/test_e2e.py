"""Metering end to end: requests through keyplane (official SDK) -> journal -> SQL -> Usage API, metrics, logs."""

from __future__ import annotations

import logging
import re
import time

import httpx
import openai
import orjson
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from keyplane.logs import JsonFormatter
from tests.usage.support import drain


def clients(srv):
    return (
        OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0),
        OpenAI(base_url=srv.v1, admin_api_key=srv.admin_key, api_key="x", max_retries=0),
    )


def scrape(srv, token: str | None = None) -> dict[str, float]:
    r = httpx.get(srv.base_url + "/metrics", headers={"authorization": f"Bearer {token or srv.admin_key}"})
    assert r.status_code == 200, r.text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))


def test_usage_api_matches_the_requests_made(gateway):
    srv = gateway()
    client, admin = clients(srv)
    start = int(time.time()) - 5
    made = {"input": 0, "output": 0, "cached": 0, "n": 0}
    ids = []

    def count(usage, rid):
        made["input"] += usage.prompt_tokens
        made["output"] += usage.completion_tokens
        made["cached"] += usage.prompt_tokens_details.cached_tokens or 0
        made["n"] += 1
        ids.append(rid)

    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"hello number {i} " * (i + 1)}],
            extra_headers={"x-fake-cached-tokens": "2"},
        )
        count(raw.parse().usage, raw.headers["x-keyplane-request-id"])
    # Streamed, with usage asked for and not: keyplane learns the usage either way.
    for include in (True, False):
        kw = {"stream_options": {"include_usage": True}} if include else {}
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "stream please"}], stream=True, **kw
        ) as resp:
            chunks = list(resp.parse())
            rid = resp.headers["x-keyplane-request-id"]
        if include:
            count(chunks[-1].usage, rid)
        else:
            assert all(c.usage is None for c in chunks)
            ids.append(rid)
            made["n"] += 1
    r = client.responses.with_raw_response.create(model="gpt-4o-mini", input="a responses API call")
    u = r.parse().usage
    made["input"] += u.input_tokens
    made["output"] += u.output_tokens
    made["n"] += 1
    ids.append(r.headers["x-keyplane-request-id"])
    upstream_ids = {r.headers["x-keyplane-request-id"]: r.headers["x-request-id"]}
    emb = client.embeddings.create(model="text-embedding-3-small", input=["one two three", "four"])
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-status": "500"}
        )
    drain(srv)

    listed = httpx.get(
        srv.v1 + "/organization/usage/requests",
        params={"limit": 100},
        headers={"authorization": f"Bearer {srv.admin_key}"},
    ).json()["data"]
    by_id = {x["id"]: x for x in listed}
    assert len(listed) == made["n"] + 2  # + the embeddings call + the failed one
    assert set(ids) <= set(by_id)
    for own, theirs in upstream_ids.items():  # the upstream's id is kept beside keyplane's own
        assert theirs.startswith("req_fake") and by_id[own]["upstream_request_id"] == theirs
    stream_rows = [x for x in listed if x["stream"]]
    assert len(stream_rows) == 2 and all(x["ttft_ms"] is not None and x["status"] == 200 for x in stream_rows)
    failed = [x for x in listed if x["status"] == 500]
    assert len(failed) == 1 and failed[0]["upstream"] == "fake" and failed[0]["input_tokens"] == 0

    page = admin.admin.organization.usage.completions(start_time=start, bucket_width="1h", limit=2)
    res = [r for b in page.data for r in b.results]
    stream_plain = by_id[ids[4]]  # the stream without include_usage: its usage came from the upstream anyway
    assert sum(r.input_tokens for r in res) == made["input"] + stream_plain["input_tokens"]
    assert sum(r.output_tokens for r in res) == made["output"] + stream_plain["output_tokens"]
    assert sum(r.input_cached_tokens for r in res) == made["cached"]
    assert sum(r.num_model_requests for r in res) == made["n"]  # the 500 answered nothing: not a model request
    page = admin.admin.organization.usage.embeddings(
        start_time=start, bucket_width="1m", limit=10, group_by=["api_key_id", "model"]
    )
    res = [r for b in page.data for r in b.results]
    assert sum(r.input_tokens for r in res) == emb.usage.prompt_tokens
    assert {(r.model, r.api_key_id) for r in res} == {("text-embedding-3-small", by_id[ids[0]]["api_key_id"])}
    costs = admin.admin.organization.usage.costs(start_time=start, group_by=["project_id"])
    assert sum(r.amount.value for b in costs.data for r in b.results) == pytest.approx(
        sum(x["cost"]["value"] for x in listed)
    )

    m = scrape(srv)
    assert total(m, "keyplane_requests_total") == len(listed)
    assert total(m, "keyplane_requests_total", status_class="5xx") == 1
    assert total(m, "keyplane_tokens_total", type="output") == sum(x["output_tokens"] for x in listed)
    assert total(m, "keyplane_tokens_total", type="input", model="gpt-4o-mini") == sum(
        x["input_tokens"] for x in listed if x["model"] == "gpt-4o-mini"
    )
    assert total(m, "keyplane_time_to_first_token_seconds_count") >= 2
    assert total(m, "keyplane_upstream_errors_total", upstream="fake", status_class="5xx") == 1
    assert total(m, "keyplane_usage_journal_records_total") == len(listed)
    assert total(m, "keyplane_usage_journal_lag_records") == 0
    assert "api_key_id" not in " ".join(m)  # no key ids unless enabled


def test_cancelled_stream_is_recorded(gateway):
    srv = gateway()
    client, _ = clients(srv)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a long answer"}],
        stream=True,
        extra_headers={"x-fake-chunk-delay-ms": "200", "x-fake-text": " ".join(["word"] * 40)},
    ) as resp:
        rid = resp.headers["x-keyplane-request-id"]
        it = resp.iter_lines()
        for _ in range(4):
            next(it)
    # The client went away mid-stream: keyplane cancels the upstream call and records what was generated.
    deadline = time.monotonic() + 10
    row = None
    while time.monotonic() < deadline and row is None:
        drain(srv)
        r = httpx.get(srv.v1 + "/organization/usage/requests", headers={"authorization": f"Bearer {srv.admin_key}"})
        row = next((x for x in r.json()["data"] if x["id"] == rid), None)
        time.sleep(0.05)
    assert row is not None and row["disconnected"] and row["stream"]
    assert row["input_tokens"] > 0 and 0 < row["output_tokens"] < 40


def test_access_log_has_ids_but_never_a_key_or_prompt(gateway, caplog):
    srv = gateway()
    client, _ = clients(srv)
    secret_prompt = "the-launch-code-is-PLUTO-4417"
    caplog.set_level(logging.INFO, logger="keyplane.access")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": secret_prompt}]
    )
    rid = raw.headers["x-keyplane-request-id"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": secret_prompt}])
    drain(srv)
    fmt = JsonFormatter()
    lines = [fmt.format(r) for r in caplog.records if r.name == "keyplane.access"]
    assert lines, "no access-log line"
    parsed = [orjson.loads(x) for x in lines]
    mine = [p for p in parsed if p["request_id"] == rid]
    assert len(mine) == 1
    assert [p["status"] for p in parsed if p["model"] is None] == [404]  # the refused request has its line too
    line = mine[0]
    assert line["status"] == 200 and line["model"] == "gpt-4o-mini" and line["api_key_id"].startswith("key_")
    assert line["input_tokens"] > 0 and line["latency_ms"] > 0 and line["logger"] == "keyplane.access"
    everything = "\n".join(lines) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (srv.api_key, srv.admin_key, secret_prompt, srv.api_key[-12:]):
        assert secret not in everything


def test_metrics_auth_modes(gateway, monkeypatch):
    monkeypatch.setenv("KP_TEST_METRICS_TOKEN", "metrics-token-123")
    srv = gateway(KEYPLANE_METRICS_TOKEN_ENV="KP_TEST_METRICS_TOKEN")
    url = srv.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, headers={"authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer metrics-token-123"}).status_code == 200
    r = httpx.get(url, headers={"authorization": f"Bearer {srv.admin_key}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    only_token = gateway(KEYPLANE_METRICS_AUTH="token", KEYPLANE_METRICS_TOKEN_ENV="KP_TEST_METRICS_TOKEN")
    assert (
        httpx.get(only_token.base_url + "/metrics", headers={"authorization": f"Bearer {srv.admin_key}"}).status_code
        == 401
    )
    open_ = gateway(KEYPLANE_METRICS_AUTH="none")
    assert httpx.get(open_.base_url + "/metrics").status_code == 200


def test_metric_labels_are_bounded(gateway):
    srv = gateway(KEYPLANE_METRICS_KEY_LABELS="true")
    client, _ = clients(srv)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="made-up-model-xyz", messages=[{"role": "user", "content": "hi"}])
    m = scrape(srv)
    keys = {re.search(r"api_key_id=([^,}]*)", k).group(1) for k in m if "api_key_id=" in k}
    assert keys and all(k.startswith("key_") for k in keys)
    assert not any("made-up-model-xyz" in k for k in m)  # an unknown model is labelled "other"
    # The refusal (404 before any upstream call) is a rejection, and a 4xx request, but no usage record.
    assert total(m, "keyplane_admission_rejections_total", reason="model_not_found") == 1
    assert total(m, "keyplane_requests_total", status_class="4xx", model="none") == 1  # no model known yet
    drain(srv)
    listed = httpx.get(
        srv.v1 + "/organization/usage/requests", headers={"authorization": f"Bearer {srv.admin_key}"}
    ).json()["data"]
    assert [x["status"] for x in listed] == [200]


def test_grafana_dashboard_queries_exported_metrics(gateway):
    """Every metric the dashboard queries is exported by a real /metrics after some traffic."""
    import json
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[2] / "deploy/grafana/keyplane.json").read_text())
    srv = gateway()
    client, _ = clients(srv)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "s"}], stream=True
    ) as stream:
        list(stream)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-fake-status": "503"}
        )
    text = httpx.get(srv.base_url + "/metrics", headers={"authorization": f"Bearer {srv.admin_key}"}).text
    exported: set[str] = set()
    for fam in text_string_to_metric_families(text):
        exported.update(s.name for s in fam.samples)
        if fam.type == "histogram":
            exported.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count"))
        elif fam.type == "counter":
            exported.add(fam.name + "_total")
        else:
            exported.add(fam.name)
    exprs: list[str] = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    exprs.extend(v["definition"] for v in dash["templating"]["list"] if v.get("definition"))
    used = {m for e in exprs for m in re.findall(r"\bkeyplane_[a-z0-9_]+", e)}
    assert len(exprs) >= 20 and len(used) >= 10
    # keyplane_provider_*: exported with [[providers]] only; tests/providers/test_keyplane_as_provider.py
    # checks them on a gateway that governs a provider.
    provider = {m for m in used if m.startswith("keyplane_provider_")}
    assert len(provider) >= 6
    assert used - provider <= exported, used - provider - exported
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needle in ("spend per project", "tokens", "latency", "first token", "4xx", "rejections"):
        assert needle in titles
    # The sample-bearing series after that traffic include the core ones.
    for name in (
        "keyplane_requests_total",
        "keyplane_cost_usd_total",
        "keyplane_request_duration_seconds_bucket",
        "keyplane_time_to_first_token_seconds_bucket",
        "keyplane_upstream_errors_total",
    ):
        assert f"\n{name}{{" in text, name


def test_active_streams_gauge(gateway):
    srv = gateway()
    client, _ = clients(srv)
    assert total(scrape(srv), "keyplane_active_streams") == 0
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-fake-chunk-delay-ms": "100", "x-fake-text": " ".join(["word"] * 10)},
    ) as resp:
        it = resp.iter_lines()
        next(it)
        assert total(scrape(srv), "keyplane_active_streams") == 1
        for _ in it:
            pass
    deadline = time.monotonic() + 5
    while total(scrape(srv), "keyplane_active_streams") != 0:
        assert time.monotonic() < deadline, "the gauge never went back to 0"
        time.sleep(0.05)
