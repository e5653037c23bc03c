"""Vector store storage in the Usage API's vector_stores bucket (issue 17 item 6), through the official SDK:
the usage_bytes the upstream reports on each vector store object that passes through keyplane, per project,
on SQLite and PostgreSQL, with a clock the test moves day by day."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI
from sqlalchemy import func, select

from keyplane.clock import FakeClock
from keyplane.testing import FakeUpstream
from keyplane.usage.models import VectorStoreSize
from tests.billing.conftest import admin_http, admin_sdk, config
from tests.support import Gateways, RunningServer

DAY = 86400
DAY0 = 1_800_000_000 - 1_800_000_000 % DAY  # a UTC midnight
NOW = DAY0 + 3600


@pytest.fixture
def gw(database_url: str, gateways: Gateways, fake: FakeUpstream) -> Iterator[tuple[RunningServer, FakeClock]]:
    clock = FakeClock(NOW)
    yield gateways.start(config(fake), clock, store=database_url), clock
    gateways.stop_all()  # before the test's PostgreSQL database is dropped


def _other_project(srv: RunningServer) -> tuple[str, OpenAI]:
    with admin_http(srv) as h:
        p = h.post("/projects", json={"name": "other"}).json()
        key = h.post(f"/projects/{p['id']}/api_keys", json={"name": "k"}).json()
    return p["id"], OpenAI(base_url=srv.v1, api_key=key["value"], max_retries=0)


def _rows(srv: RunningServer) -> int:
    async def go() -> int:
        async with srv.app.runtime.read() as s:
            return int((await s.execute(select(func.count()).select_from(VectorStoreSize))).scalar_one())

    return int(srv.call(go()))


def test_vector_store_bytes_per_project_and_day(gw, fake: FakeUpstream):
    srv, clock = gw
    one = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    pid2, two = _other_project(srv)
    fake.objects.store_bytes = 1000
    a = one.vector_stores.create(name="a")
    fake.objects.store_bytes = 500
    b = one.vector_stores.create(name="b")
    fake.objects.store_bytes = 7000
    c = two.vector_stores.create(name="c")
    stores = fake.objects.vector_stores
    stores[a.id]["usage_bytes"] = 3000
    assert one.vector_stores.retrieve(a.id).usage_bytes == 3000
    stores[b.id]["usage_bytes"] = 800
    assert {s.id for s in one.vector_stores.list()} == {a.id, b.id}  # the other project's store filtered out
    assert [s.id for s in two.vector_stores.list()] == [c.id]
    with pytest.raises(openai.NotFoundError):  # another project's store: refused, and nothing recorded
        two.vector_stores.retrieve(a.id)
    rows = _rows(srv)
    assert rows == 5  # a, b, c created; a grew; b grew (seen in the list)
    one.vector_stores.retrieve(a.id)
    one.vector_stores.list()
    assert _rows(srv) == rows  # polled with no change: nothing written

    clock.advance(DAY)  # day 1: b deleted, a shrinks, c reported with its expiry (in the middle of day 2)
    one.vector_stores.delete(b.id)
    stores[a.id]["usage_bytes"] = 2000
    one.vector_stores.update(a.id, name="a2")
    stores[c.id]["expires_at"] = DAY0 + 2 * DAY + 3600
    two.vector_stores.retrieve(c.id)
    clock.advance(3 * DAY)

    usage = admin_sdk(srv).admin.organization.usage
    page = usage.vector_stores(start_time=DAY0, end_time=DAY0 + 4 * DAY, bucket_width="1d", group_by=["project_id"])
    got = [{r.project_id: r.usage_bytes for r in bk.results} for bk in page.data]
    assert all(r.object == "organization.usage.vector_stores.result" for bk in page.data for r in bk.results)
    p1 = srv.project_id
    assert got == [
        {p1: 3000 + 800, pid2: 7000},  # the largest size each store had during the day
        {p1: 3000 + 800, pid2: 7000},  # a held 3000 and b 800 when the day began
        {p1: 2000, pid2: 7000},  # b deleted; c alive until its expiry
        {p1: 2000},  # c expired
    ]
    total = usage.vector_stores(start_time=DAY0, end_time=DAY0 + 4 * DAY, bucket_width="1d")
    assert [[(r.project_id, r.usage_bytes) for r in bk.results] for bk in total.data] == [
        [(None, 10_800)],
        [(None, 10_800)],
        [(None, 9000)],
        [(None, 2000)],
    ]
    only = usage.vector_stores(start_time=DAY0, end_time=DAY0 + DAY, project_ids=[pid2], group_by=["project_id"])
    assert [(r.project_id, r.usage_bytes) for bk in only.data for r in bk.results] == [(pid2, 7000)]
    hourly = usage.vector_stores(start_time=DAY0, end_time=DAY0 + 3 * 3600, bucket_width="1h")
    assert [[r.usage_bytes for r in bk.results] for bk in hourly.data] == [[], [10_800], [10_800]]
