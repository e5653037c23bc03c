"""Store behaviour the API relies on: WAL on SQLite, last_used_at batched, migrations idempotent."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from keyplane.store import db
from tests.support import init_org, make_settings


def test_sqlite_uses_wal(tmp_path):
    settings = make_settings(tmp_path / "h")
    init_org(settings)
    path = settings.database_url.split(":///", 1)[1]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _all_models() -> None:
    """Import every feature's models so that Base.metadata holds every table."""
    import importlib
    import pkgutil

    import keyplane

    for m in pkgutil.walk_packages(keyplane.__path__, "keyplane."):
        if m.name.endswith(".models"):
            importlib.import_module(m.name)


def test_migrations_are_idempotent_and_match_the_models(settings):
    """Migrating twice changes nothing, leaves the store at the scripts' head, and the schema the migrations
    build is the one the models declare (a model changed without its migration fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect, text

    from keyplane.store.models import Base

    _all_models()

    def schema(sync_conn):  # table -> (columns, indexes)
        i = inspect(sync_conn)
        return {
            t: (
                sorted((c["name"], str(c["type"]), c["nullable"]) for c in i.get_columns(t)),
                sorted(ix["name"] or "" for ix in i.get_indexes(t)),
            )
            for t in sorted(i.get_table_names())
        }

    async def twice() -> None:
        engine = db.make_engine(settings.database_url)
        try:
            await db.migrate(engine)
            async with engine.connect() as conn:
                first = await conn.run_sync(schema)
            await db.migrate(engine)
            async with engine.connect() as conn:
                assert await conn.run_sync(schema) == first
                version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
                diffs = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        finally:
            await engine.dispose()
        assert version == [db.head_revision()]
        assert diffs == [], f"the migrations and the models differ: {diffs}"

    asyncio.run(twice())


def test_last_used_at_is_batched(database_url, gateways):
    import httpx

    srv = gateways.start(store=database_url, KEYPLANE_LAST_USED_FLUSH_SECONDS="0.2")
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    key_url = srv.v1 + f"/organization/admin_api_keys/{srv.init['admin_key_id']}"
    deadline = time.monotonic() + 5
    while httpx.get(key_url, headers=h).json()["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at never flushed"
        time.sleep(0.05)


def test_head_revision_matches_alembic():
    from alembic.script import ScriptDirectory

    assert db.head_revision() == ScriptDirectory.from_config(db._alembic_config()).get_current_head()


def test_a_store_at_head_does_not_import_alembic(settings):
    import subprocess
    import sys

    init_org(settings)  # migrated to head
    code = (
        "import asyncio, sys\nfrom keyplane.store import db\n"
        f"e = db.make_engine({settings.database_url!r})\n"
        "asyncio.run(db.migrate(e))\nasyncio.run(e.dispose())\nprint('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
