"""Migration 0021 over a store with keys rotated before it: each later key of a line gets the line's first key as
its lineage, its predecessor's key spend limit and rate limits where it has none, and its spend ledger rows added
to the first key's (what a rotation does since; tests/billing/test_key_rotation_budget.py), on SQLite and
PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from keyplane.store import db
from tests.usage.test_service_tier import _alembic, empty_store  # noqa: F401 - the fixture

T = 1_764_000_000


async def _key(conn, kid: str, rotated_to: str | None) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(
        text(
            "INSERT INTO api_keys (id, kind, name, digest, redacted_value, permissions, created_at, updated_at, "
            "rotated_to) VALUES (:id, 'proj', 'k', :digest, 'sk-...x', '\"all\"', :t, :t, :rotated_to)"
        ),
        {"id": kid, "digest": f"d-{kid}", "t": T, "rotated_to": rotated_to},
    )


async def _ledger(conn, kid: str, micros: int, period: str = "2026-12") -> None:  # type: ignore[no-untyped-def]
    await conn.execute(
        text(
            "INSERT INTO spend_ledger (period, scope, scope_id, micros, requests, updated_at) "
            "VALUES (:period, 'api_key', :id, :micros, 1, :t)"
        ),
        {"period": period, "id": kid, "micros": micros, "t": T},
    )


def test_migration_0021_gives_keys_rotated_before_it_their_line(empty_store):  # noqa: F811
    import asyncio

    async def run() -> None:
        engine = db.make_engine(empty_store)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_alembic, "upgrade", "0020")
            async with engine.begin() as conn:
                await _key(conn, "key_a", "key_b")  # a -> b -> c, and d alone
                await _key(conn, "key_b", "key_c")
                await _key(conn, "key_c", None)
                await _key(conn, "key_d", None)
                await conn.execute(
                    text(
                        "INSERT INTO spend_limits (scope, scope_id, project_id, threshold_cents, currency, interval, "
                        "enforcing, created_at, updated_at) VALUES ('api_key', 'key_a', NULL, 300, 'USD', 'month', "
                        ":yes, :t, :t)"
                    ),
                    {"t": T, "yes": True},
                )
                await conn.execute(
                    text(
                        "INSERT INTO rate_limits (scope, scope_id, model, project_id, max_requests_per_1_day, "
                        "updated_at) VALUES ('api_key', 'key_a', 'gpt-4o-mini', 'proj_x', 2, :t)"
                    ),
                    {"t": T},
                )
                await _ledger(conn, "key_a", 100)
                await _ledger(conn, "key_b", 50)
                await _ledger(conn, "key_c", 25)
                await _ledger(conn, "key_c", 7, period="2026-11")
                await _ledger(conn, "key_d", 9)
            await db.migrate(engine)  # 0021 (and any later one)
            async with engine.connect() as conn:
                lineage = dict((await conn.execute(text("SELECT id, lineage_id FROM api_keys"))).all())
                limits = dict((await conn.execute(text("SELECT scope_id, threshold_cents FROM spend_limits"))).all())
                rates = dict(
                    (await conn.execute(text("SELECT scope_id, max_requests_per_1_day FROM rate_limits"))).all()
                )
                ledger = {
                    (p, k): m
                    for p, k, m in await conn.execute(
                        text("SELECT period, scope_id, micros FROM spend_ledger WHERE scope = 'api_key'")
                    )
                }
        finally:
            await engine.dispose()
        assert lineage == {"key_a": None, "key_b": "key_a", "key_c": "key_a", "key_d": None}
        assert limits == {"key_a": 300, "key_b": 300, "key_c": 300}
        assert rates == {"key_a": 2, "key_b": 2, "key_c": 2}
        assert ledger == {("2026-12", "key_a"): 175, ("2026-11", "key_a"): 7, ("2026-12", "key_d"): 9}

    asyncio.run(run())
