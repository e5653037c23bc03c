"""The hygiene report's spend-limit findings (GET /organization/projects/{id}/spend_limit per active project) and
its inventory summary, against the fake provider."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from keyplane.config import ProviderSection
from keyplane.providers.connector import Connector
from keyplane.providers.models import ProviderChange
from keyplane.providers.report import FINDINGS, report
from keyplane.providers.sync import fetch, store
from keyplane.store import db
from tests.support import make_settings

NOW = 1_800_000_000


def _sync_and_report(fake_provider, tmp_path, syncs: int = 1, between=None) -> tuple[dict, list]:
    fake = fake_provider.fake
    url = make_settings(tmp_path / "home").database_url
    cfg = ProviderSection(name="acme", base_url=fake_provider.base_url, admin_key_env="K")

    async def go():
        engine = db.make_engine(url)
        await db.migrate(engine)
        sessions = db.sessionmaker(engine)
        conn = Connector(cfg, {"K": fake.admin_key})
        try:
            for i in range(syncs):
                if i and between is not None:
                    between()
                await store(sessions, "acme", await fetch(conn), NOW + i)
            async with sessions() as s:
                rep = await report(s, "acme", NOW + 10, 30)
                history = list(
                    (
                        await s.execute(
                            select(ProviderChange).where(
                                ProviderChange.kind == "project", ProviderChange.change == "changed"
                            )
                        )
                    ).scalars()
                )
            return rep, history
        finally:
            await conn.close()
            await engine.dispose()

    return asyncio.run(go())


def _limit_calls(fake) -> list[str]:
    return [p for m, p, _ in fake.requests if p.endswith("/spend_limit")]


def test_projects_without_a_spend_limit(fake_provider, tmp_path):
    fake = fake_provider.fake
    fake.set_spend_limit("proj_data", 500, enforcing=True)
    rep, _ = _sync_and_report(fake_provider, tmp_path)
    assert [p["id"] for p in rep["projects_without_spend_limit"]] == ["proj_default", "proj_web"]
    assert rep["projects_spend_limit_unknown"] == []
    assert len(_limit_calls(fake)) == 3  # one per active project
    assert rep["inventory"] == {"project": 3, "user": 2, "service_account": 2, "api_key": 4, "admin_key": 1}
    assert rep["last_synced_at"] == NOW and set(FINDINGS) <= set(rep)


def test_archived_projects_are_not_reported(fake_provider, tmp_path):
    fake = fake_provider.fake
    fake.projects[2]["status"] = "archived"  # proj_web
    rep, _ = _sync_and_report(fake_provider, tmp_path)
    assert [p["id"] for p in rep["projects_without_spend_limit"]] == ["proj_data", "proj_default"]
    assert "/v1/organization/projects/proj_web/spend_limit" not in _limit_calls(fake)


def test_a_refused_limit_call_is_unknown_not_unlimited(fake_provider, tmp_path):
    fake = fake_provider.fake
    fake.spend_limit_status = 403
    rep, _ = _sync_and_report(fake_provider, tmp_path)
    assert rep["projects_without_spend_limit"] == []
    assert [p["id"] for p in rep["projects_spend_limit_unknown"]] == ["proj_data", "proj_default", "proj_web"]
    assert "answered 403" in rep["projects_spend_limit_unknown"][0]["reason"]
    assert len(_limit_calls(fake)) == 1  # refused once: not asked again for every project
    assert fake.admin_key not in json.dumps(rep)


def test_an_api_without_the_endpoint_is_unknown(fake_provider, tmp_path):
    fake_provider.fake.spend_limit_status = 404  # OpenAI's "Invalid URL (GET ...)" 404
    rep, _ = _sync_and_report(fake_provider, tmp_path)
    assert rep["projects_without_spend_limit"] == []
    assert (
        len(rep["projects_spend_limit_unknown"]) == 3
        and "answered 404" in rep["projects_spend_limit_unknown"][0]["reason"]
    )


def test_a_removed_limit_is_in_the_history(fake_provider, tmp_path):
    fake = fake_provider.fake
    fake.set_spend_limit("proj_data", 500)
    rep, history = _sync_and_report(fake_provider, tmp_path, syncs=2, between=lambda: fake.spend_limits.clear())
    assert [p["id"] for p in rep["projects_without_spend_limit"]] == ["proj_data", "proj_default", "proj_web"]
    assert [(h.object_id, json.loads(h.data)["spend_limit"]) for h in history] == [("proj_data", None)]
