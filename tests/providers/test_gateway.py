"""A running keyplane with a provider: the background sync at start-up, the admin endpoints, and
`keyplane scan --verify/--revoke` on a leaked OpenAI project key (only its last four characters leave)."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import BadRequestError, OpenAI

from keyplane.testing.fake_org import Bucket
from tests.scan.helpers import cli as scan_cli

B64 = ("AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_" * 2)[:74]


def _leaked(tail: str) -> str:
    return "sk-proj-" + B64[:74] + "T3BlbkFJ" + B64[:70] + tail


@pytest.fixture
def gateway(gateways, fake_provider, monkeypatch):
    monkeypatch.setenv("ACME_ADMIN_KEY", fake_provider.fake.admin_key)
    fake = fake_provider.fake
    fake.add_key("proj_web", "key_leak", _leaked("LEAK"), user=fake.users[0])
    fake.usage.append(Bucket(int(time.time()) // 3600 * 3600, "proj_web", "key_leak", "gpt-4o", 10, 10))
    fake.usage.append(Bucket(int(time.time()) // 3600 * 3600 - 3600, "proj_web", "key_leak", "gpt-4o", 100, 50))
    fake.costs.append({"start_time": int(time.time()) // 86400 * 86400, "project_id": "proj_web", "value": 2.5})
    config = (
        f'[[providers]]\nname = "acme"\nbase_url = "{fake_provider.base_url}"\n'
        'admin_key_env = "ACME_ADMIN_KEY"\nsync_interval = 30\nbackfill_days = 1\n'
    )
    yield gateways.start(config)
    gateways.stop_all()  # before the fake provider stops


def _synced(server) -> dict:
    h = {"Authorization": f"Bearer {server.admin_key}"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the first background sync runs at start-up
        item = httpx.get(f"{server.v1}/organization/providers", headers=h).json()["data"][0]
        if item["last_sync"] is not None:
            return item
        time.sleep(0.05)
    raise AssertionError("the background sync did not run")


def test_background_sync_and_scan_revoke(gateway, fake_provider, tmp_path):
    leaked = _leaked("LEAK")
    fake = fake_provider.fake
    item = _synced(gateway)
    assert item["last_sync"]["inventory"]["api_key"] == 5 and item["last_sync"]["usage_rows"]["completions"] == 2
    assert item["poller_leader"] is True  # the only instance holds the provider's poller lease
    want = (
        'keyplane_provider_tokens_last_hour{api_key_id="key_leak",model="gpt-4o",project_id="proj_web",'
        'provider="acme",type="output"} 50.0'
    )
    deadline = time.monotonic() + 10
    while want not in (
        text := httpx.get(gateway.base_url + "/metrics", headers={"authorization": f"Bearer {gateway.admin_key}"}).text
    ):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.05)
    assert 'keyplane_provider_last_sync_timestamp_seconds{provider="acme"}' in text

    h = {"Authorization": f"Bearer {gateway.admin_key}"}
    bad = httpx.post(f"{gateway.v1}/organization/providers/keys/match", headers=h, json={"suffixes": ["toolong"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "suffixes"
    assert httpx.post(f"{gateway.v1}/organization/providers/keys/match", json={"suffixes": ["LEAK"]}).status_code == 401

    src = tmp_path / "repo"
    src.mkdir()
    (src / "settings.py").write_text(f'OPENAI_API_KEY = "{leaked}"\nOTHER = "{_leaked("NONE")}"\n')
    fake.requests.clear()
    res = scan_cli(str(src), "--verify", "--gateway", gateway.base_url, "--admin-key", gateway.admin_key)
    assert res.exit_code == 1 and leaked not in res.output
    assert "acme/proj_web/key_leak" in res.stderr and "not a key of a governed organization" in res.stderr
    assert "key_leak" in fake.key_ids()

    res = scan_cli(str(src), "--revoke", "--gateway", gateway.base_url, "--admin-key", gateway.admin_key)
    assert "revoked at the provider now" in res.stderr, res.stderr
    assert "key_leak" not in fake.key_ids()
    assert [r for r in fake.requests if r[0] == "DELETE"] == [
        ("DELETE", "/v1/organization/projects/proj_web/api_keys/key_leak", "")
    ]
    audit = httpx.get(f"{gateway.v1}/organization/audit_logs", headers=h, params={"resource_ids[]": "key_leak"}).json()[
        "data"
    ]
    assert audit[0]["type"] == "provider.api_key.deleted"


def test_usage_and_costs_api_serve_provider_buckets(gateway, fake_provider):
    _synced(gateway)
    admin = OpenAI(base_url=gateway.v1, admin_api_key=gateway.admin_key, api_key="unused", max_retries=0).admin
    hour = int(time.time()) // 3600 * 3600
    page = admin.organization.usage.completions(
        start_time=hour - 3600,
        bucket_width="1h",
        limit=2,
        group_by=["api_key_id", "model"],
        extra_query={"source": "provider:acme"},
    )
    first, second = page.data
    assert first.start_time == hour - 3600 and len(first.results) == 1
    r = first.results[0]
    assert (r.api_key_id, r.model, r.input_tokens, r.output_tokens) == ("key_leak", "gpt-4o", 100, 50)
    assert second.results[0].input_tokens == 10
    day = hour // 86400 * 86400
    costs = admin.organization.usage.costs(
        start_time=day, group_by=["project_id"], extra_query={"source": "provider:acme"}
    )
    assert [(c.project_id, c.amount.value) for c in costs.data[0].results] == [("proj_web", 2.5)]
    # keyplane's own usage is untouched by the provider's
    own = admin.organization.usage.completions(start_time=hour - 3600, bucket_width="1h", limit=2)
    assert all(b.results == [] for b in own.data)
    with pytest.raises(BadRequestError, match="source"):
        admin.organization.usage.completions(start_time=hour, bucket_width="1h", extra_query={"source": "provider:x"})
    with pytest.raises(BadRequestError, match="hourly"):
        admin.organization.usage.completions(
            start_time=hour, bucket_width="1m", extra_query={"source": "provider:acme"}
        )
