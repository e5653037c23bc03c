"""The Providers page over plain HTTP: a gateway governing the fake provider organization shows, to an owner and
to a reader, the inventory summary and the hygiene report that GET /v1/organization/providers/{name}/report
(and `keyplane providers report --json`) give, and what the provider rules did."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from keyplane.testing.fake_org import Bucket
from keyplane.testing.fake_provider import FakeProvider, RunningFake
from tests.providers.conftest import PROJ_SECRET, build_org
from tests.web.conftest import Web

CONFIG = """
[[providers]]
name = "acme"
base_url = "{url}"
admin_key_env = "ACME_ADMIN_KEY"
sync_interval = 30
backfill_days = 1

[[guard.rules]]
name = "acme-ceiling"
kind = "ceiling"
scope = "provider_key"
threshold = 1000
mode = "revoke"
dry_run = true
"""


@pytest.fixture
def fake() -> Iterator[RunningFake]:
    f = FakeProvider()
    build_org(f)
    f.set_spend_limit("proj_data", 500)
    f.usage.append(Bucket(int(time.time()) // 3600 * 3600 - 3600, "proj_data", "key_data1", "gpt-4o", 4000, 1000))
    running = RunningFake(f)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def web_env(fake, monkeypatch):
    monkeypatch.setenv("ACME_ADMIN_KEY", fake.fake.admin_key)
    return CONFIG.format(url=fake.base_url), {}


def _report(srv, query: str = "") -> httpx.Response:
    return httpx.get(
        f"{srv.v1}/organization/providers/acme/report{query}", headers={"Authorization": f"Bearer {srv.admin_key}"}
    )


def _synced(srv) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the first background sync runs at start-up
        r = _report(srv)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["last_synced_at"] is not None and body["inventory"]["api_key"]:
            events = httpx.get(
                f"{srv.v1}/organization/providers/events", headers={"Authorization": f"Bearer {srv.admin_key}"}
            ).json()["data"]
            if events:
                return body
        time.sleep(0.05)
    raise AssertionError("the background sync did not run")


def _counts(page: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-finding="([a-z_]+)">(\d+)<', page)}


def test_owner_sees_inventory_and_hygiene_as_the_api_gives_them(owner, web_server, fake):
    api = _synced(web_server)
    page = owner.get("/providers")
    assert page.status_code == 200
    text = page.text
    assert '<a href="/providers" aria-current="page">Providers</a>' in text
    inventory = dict(re.findall(r'data-inventory="([a-z_]+)">(\d+)<', text))
    assert inventory == {k: str(v) for k, v in api["inventory"].items()}
    assert inventory["api_key"] == "4" and inventory["project"] == "3"
    counts = _counts(text)
    assert counts == {k: len(api[k]) for k in counts} and len(counts) == 7
    assert counts["projects_without_spend_limit"] == 2 and counts["projects_spend_limit_unknown"] == 0
    table = text.split('data-finding-table="projects_without_spend_limit"')[1].split("</table>")[0]
    assert "proj_default" in table and "proj_web" in table and "proj_data" not in table
    departed = text.split('data-finding-table="keys_of_departed_users"')[1].split("</table>")[0]
    assert "key_dflt" in departed and "user_carol" in departed
    events = text.split('id="provider-events"')[1].split("</table>")[0]
    assert "acme-ceiling" in events and "(dry run)" in events
    assert fake.fake.admin_key not in text and PROJ_SECRET not in text


def test_unused_days_follows_the_query(owner, web_server):
    _synced(web_server)
    # key_data1 and key_etl were last used at 1_800_000_000 (2027): never "unused"; key_old never used,
    # created 2023; key_dflt used 2027.
    page = owner.get("/providers?unused_days=7").text
    assert _counts(page)["unused_keys"] == len(_report(web_server, "?unused_days=7").json()["unused_keys"]) == 1
    assert 'value="7"' in page
    assert owner.get("/providers?unused_days=nonsense").status_code == 200  # falls back to 30


def test_reader_may_view(owner, web_server, clock):
    _synced(web_server)
    r = owner.post("/users", {"email": "reader@example.com", "role": "reader"})
    password = html.unescape(re.search(r'id="secret-value"[^>]*value="([^"]+)"', r.text).group(1))
    reader = Web(web_server, clock)
    try:
        reader.sign_in("reader@example.com", password)
        page = reader.get("/providers")
        assert page.status_code == 200 and "Projects without a spend limit" in page.text
        assert '<form method="post"' not in page.text.split("<main")[1].split("</main>")[0]  # nothing to change
    finally:
        reader.close()


def test_signed_out_is_sent_to_login(web):
    r = web.get("/providers")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_report_endpoint_errors(web_server):
    assert _report(web_server, "?unused_days=0").status_code == 400
    r = httpx.get(
        f"{web_server.v1}/organization/providers/nope/report",
        headers={"Authorization": f"Bearer {web_server.admin_key}"},
    )
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"
    assert httpx.get(f"{web_server.v1}/organization/providers/acme/report").status_code == 401


def test_without_providers_the_page_says_so(gateways, clock):
    from tests.web.conftest import with_owner_password

    srv = gateways.start(clock=clock, seed=with_owner_password)
    w = Web(srv, clock)
    try:
        w.sign_in()
        assert 'href="/providers"' not in w.get("/").text  # no nav entry without [[providers]]
        page = w.get("/providers").text
        assert "No provider organizations" in page
    finally:
        w.close()
