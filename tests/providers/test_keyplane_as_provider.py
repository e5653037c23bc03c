"""keyplane governs another keyplane: instance P (a real server, its demo upstream) plays the provider
organization, instance G has ``[[providers]] base_url = P's /v1``. Traffic through P with P's project keys,
G syncs (inventory, usage from P's /v1/organization/usage/*), a provider_key rule on G fires on a surge and
deletes the key AT P through P's admin API, and P refuses the key from then on (401).

One FakeClock drives both instances: the hours of traffic and of G's syncs pass without sleeping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from keyplane.clock import FakeClock
from keyplane.providers import sync
from keyplane.providers.connector import Connector
from keyplane.providers.models import ProviderEvent
from tests.usage.support import drain

HOUR = 3600
T0 = 1_800_000_000 // HOUR * HOUR + 600  # ten minutes into an hour
ENV = "KP_P_ADMIN_KEY"

G_CONFIG = f"""
[[providers]]
name = "p"
base_url = "{{base}}"
admin_key_env = "{ENV}"
sync_interval = 0
backfill_days = 1

[[guard.rules]]
name = "p-key-surge"
kind = "token_surge"
scope = "provider_key"
window = "1h"
threshold = 3.0
min_volume = 100
baseline_periods = 3
mode = "revoke"
cooldown = "6h"

[prices."demo-echo"]      # G prices P's model: the estimated-cost gauge
input = 1.0
output = 2.0
"""


@pytest.fixture
def pair(gateways, monkeypatch):
    """P and G, each an org of its own (their keys differ), on one FakeClock."""
    clock = FakeClock(float(T0))
    p = gateways.start(clock=clock, org="Provider org")
    monkeypatch.setenv(ENV, p.admin_key)
    g = gateways.start(G_CONFIG.format(base=p.v1), clock, org="Gateway org")
    yield p, g, clock
    g.stop()  # G before the P it governs
    gateways.stop_all()


def chat(p, key: str, n: int = 1) -> list[int]:
    codes = []
    with httpx.Client(base_url=p.v1, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(n):
            r = c.post(
                "/chat/completions",
                json={
                    "model": "demo-echo",
                    "messages": [
                        {"role": "user", "content": "a question of some twenty tokens or so, to make the hours count"}
                    ],
                },
            )
            codes.append(r.status_code)
    return codes


def g_sync(g, now: int) -> dict:
    rt = g.app.runtime
    poller = rt.features.providers
    cfg = rt.settings.file.providers[0]

    async def go() -> dict:
        conn = Connector(cfg)  # the admin key from the environment variable the config names
        try:
            return await poller.sync_once(cfg, conn, now)
        finally:
            await conn.close()

    return g.call(go())


def test_keyplane_governs_another_keyplane(pair):
    p, g, clock = pair
    pa = OpenAI(base_url=p.v1, admin_api_key=p.admin_key, api_key="unused", max_retries=0).admin.organization
    # At P: a second project with a service account (its key shown once), as an OpenAI organization has.
    data = pa.projects.create(name="Data")
    sa = pa.projects.service_accounts.create(data.id, name="etl")
    leaky, leaky_id = sa.api_key.value, sa.api_key.id
    pa.projects.spend_limit.update(data.id, currency="USD", interval="month", threshold_amount=5000)
    quiet, quiet_id = p.api_key, next(k.id for k in pa.projects.api_keys.list(p.project_id).data)

    # Three ordinary hours, then a surge hour (10x) on the Data key; the quiet key keeps its rhythm.
    for hour in range(3):
        assert chat(p, leaky, 3) == [200] * 3 and chat(p, quiet, 1) == [200]
        drain(p)
        clock.advance(HOUR)
    assert chat(p, leaky, 30) == [200] * 30 and chat(p, quiet, 1) == [200]
    drain(p)
    p.call(p.app.runtime.last_used.flush())  # keys' last_used_at (batched) written now
    clock.advance(HOUR)  # the surge hour is now complete
    now = int(clock.now())

    out = g_sync(g, now)
    # The inventory mirrors P's projects, users, service accounts and keys (redacted values only).
    assert out["inventory"]["project"] == 2 and out["inventory"]["api_key"] == 2
    assert out["inventory"]["service_account"] == 2 and out["inventory"]["admin_key"] >= 1
    rt = g.app.runtime

    async def mirrored() -> dict:  # live or removed (the sync's rules revoke before this reads)
        async with rt.read() as s:
            return {
                (o.kind, o.object_id): (o.project_id, orjson.loads(o.data), o.removed_at)
                for o in await sync.mirror(s, "p", live=False)
            }

    m = g.call(mirrored())
    assert m[("project", data.id)][1]["name"] == "Data"
    assert m[("api_key", leaky_id)][0] == data.id and m[("api_key", quiet_id)][0] == p.project_id
    assert m[("api_key", leaky_id)][1]["redacted_value"].endswith(leaky[-4:]) and m[("api_key", quiet_id)][2] is None
    assert leaky not in str(m) and quiet not in str(m)
    assert m[("api_key", quiet_id)][1]["last_used_at"] == T0 + 3 * HOUR
    assert m[("project", data.id)][1]["spend_limit"]["threshold_amount"] == 5000
    assert m[("project", p.project_id)][1]["spend_limit"] is None  # P answers 404: none set

    # G's hygiene report on P: the default project's key, and its missing spend limit; the Data limit is read.
    h = {"Authorization": f"Bearer {g.admin_key}"}
    rep = httpx.get(f"{g.v1}/organization/providers/p/report", headers=h).json()
    assert [k["id"] for k in rep["keys_in_default_project"]] == [quiet_id]
    assert quiet_id not in [k["id"] for k in rep["unused_keys"]]  # its last_used_at came from P
    assert [x["id"] for x in rep["projects_without_spend_limit"]] == [p.project_id]
    assert rep["projects_spend_limit_unknown"] == []

    # Usage ingested from P's Usage API: G answers with P's own figures (source=provider:p).
    ga = OpenAI(base_url=g.v1, admin_api_key=g.admin_key, api_key="unused", max_retries=0).admin.organization
    start = T0 // HOUR * HOUR
    mine = pa.usage.completions(start_time=start, bucket_width="1h", limit=5, group_by=["api_key_id"])
    theirs = ga.usage.completions(
        start_time=start, bucket_width="1h", limit=5, group_by=["api_key_id"], extra_query={"source": "provider:p"}
    )
    want = {
        (b.start_time, r.api_key_id): (r.input_tokens, r.output_tokens, r.num_model_requests)
        for b in mine.data
        for r in b.results
    }
    got = {
        (b.start_time, r.api_key_id): (r.input_tokens, r.output_tokens, r.num_model_requests)
        for b in theirs.data
        for r in b.results
    }
    assert got == want and got[(start + 3 * HOUR, leaky_id)][2] == 30 and len(got) == 8

    # The rule fired on the surge and deleted the key AT P, through P's admin API; the quiet key stays.
    assert [(e["rule"], e["entity"], e["action"]) for e in out["events"]] == [("p-key-surge", leaky_id, "revoked")]
    assert out["events"][0]["figures"]["ratio"] >= 3.0
    assert leaky_id not in [k.id for k in pa.projects.api_keys.list(data.id).data]
    refused = httpx.post(
        p.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {leaky}"},
        json={"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 401, refused.text
    assert chat(p, quiet, 1) == [200]
    audit = pa.audit_logs.list(resource_ids=[leaky_id]).data
    assert audit and audit[0].type == "api_key.deleted"

    async def events() -> list[ProviderEvent]:
        async with rt.read() as s:
            return list((await s.execute(select(ProviderEvent))).scalars())

    (ev,) = g.call(events())
    assert (ev.provider, ev.key_id, ev.project_id, ev.action) == ("p", leaky_id, data.id, "revoked")

    # The next sync sees the key gone at P (the mirror keeps it, removed) and fires nothing again.
    clock.advance(600)
    again = g_sync(g, int(clock.now()))
    assert again["events"] == [] and again["inventory"]["api_key"] == 1
    assert g.call(mirrored())[("api_key", leaky_id)][2] == now  # removed when the rule deleted it

    # /metrics of G: the hour of the surge per key, and the rule's action.
    text = httpx.get(g.base_url + "/metrics", headers={"Authorization": f"Bearer {g.admin_key}"}).text
    assert (
        f'keyplane_provider_requests_last_hour{{api_key_id="{leaky_id}",model="demo-echo",'
        f'project_id="{data.id}",provider="p"}}'
    ) in text
    assert 'keyplane_provider_guard_actions_total{action="revoked",provider="p",rule="p-key-surge"} 1.0' in text
    assert "keyplane_provider_poller_leader" in text
    tin, tout, _ = got[(start + 3 * HOUR, leaky_id)]
    est = rt.features.providers.metrics.estimated[("p", data.id, leaky_id, "demo-echo")]
    assert est == pytest.approx((tin * 1.0 + tout * 2.0) / 1e6) and est > 0
    # The Grafana dashboard's provider panels query only metrics this /metrics exports.
    used = dashboard_metrics("keyplane_provider_")
    assert len(used) >= 7 and used <= exported(text), used - exported(text)


def exported(text: str) -> set[str]:
    out: set[str] = set()
    for fam in text_string_to_metric_families(text):
        out.update(s.name for s in fam.samples)
        out.add(fam.name + "_total" if fam.type == "counter" else fam.name)
    return out


def dashboard_metrics(prefix: str) -> set[str]:
    dash = json.loads((Path(__file__).parents[2] / "deploy/grafana/keyplane.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needle in ("provider tokens per provider project", "per key", "per model", "estimated cost", "rule actions"):
        assert needle in titles, needle
    return {m for e in exprs for m in re.findall(r"\bkeyplane_[a-z0-9_]+", e) if m.startswith(prefix)}
