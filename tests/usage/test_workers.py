"""Several worker processes: one journal per worker, metrics summed across workers, all drained on SIGTERM."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyplane.config import database_url_for
from tests.support import init_org, make_settings
from tests.usage.support import Proc, fake_config
from tests.usage.test_crash import _db_state

pytestmark = pytest.mark.slow

N = 120


def test_two_workers_each_journal_and_one_metrics_view(tmp_path, database_url, fake):
    fake.reset()
    home = tmp_path / "home"
    settings = make_settings(home, database_url, config_text=fake_config(fake))
    init = init_org(settings)
    mp = tmp_path / "prom"
    mp.mkdir()
    env = {
        "KEYPLANE_DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(mp),
        "KEYPLANE_USAGE_APPLY_SECONDS": "0.2",
        "KEYPLANE_LOG_REQUESTS": "false",
    }
    srv = Proc(home, env, workers=2)
    srv.wait_ready()
    journal = home / "journal"
    deadline = time.monotonic() + 60  # /readyz answers as soon as one worker is up: wait for the other
    while len(list(journal.glob("*.lock"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval (a deadline loop)

    def busy_writers() -> int:
        return sum(1 for p in journal.glob("*.seg") if p.stat().st_size > 0)

    async def fire() -> set[str]:
        h = {"authorization": f"Bearer {init['api_key']}"}
        async with httpx.AsyncClient(
            base_url=srv.base_url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
        ) as c:

            async def one(i: int) -> str:
                r = await c.post(
                    "/v1/chat/completions",
                    headers={**h, "x-fake-latency-ms": "30"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"w {i}"}]},
                )
                assert r.status_code == 200, r.text
                return r.headers["x-keyplane-request-id"]

            base = len(ids)
            return set(await asyncio.gather(*(one(base + i) for i in range(N))))

    try:
        ids: set[str] = set()
        for _ in range(10):  # until both workers have answered some (the kernel picks who accepts)
            ids |= asyncio.run(fire())
            if busy_writers() == 2:
                break
        writers = {p.name.split(".")[0] for p in journal.iterdir() if p.suffix == ".lock"}
        assert len(writers) == 2 and busy_writers() == 2  # one journal per worker process (pid in the name)

        def scrape_total() -> float:
            text = httpx.get(srv.base_url + "/metrics", headers={"authorization": f"Bearer {init['admin_key']}"}).text
            return sum(
                s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "keyplane_requests_total"
            )

        deadline = time.monotonic() + 5  # each worker moves its sums to the shared files every 0.25 s
        while scrape_total() != len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval (a deadline loop)
        # Whichever worker answers the scrape, it reports every worker's counts.
        assert {scrape_total() for _ in range(6)} == {len(ids)}
    finally:
        assert srv.terminate()
    state = asyncio.run(_db_state(database_url_for(database_url, home)))
    assert state["ids"] == ids
    assert all(v == state["raw"] for v in state["rollups"].values())
    assert not [p for p in (home / "journal").iterdir() if p.suffix == ".seg"]
