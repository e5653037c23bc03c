"""The SQLite store and its -wal/-shm files are private to the user (0600), like secret.key (#12.16)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyplane.config import Settings
from keyplane.store import db
from tests.support import Gateways


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    """The umask most users have (files 0644 unless the program asks otherwise)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store(settings_url: str) -> Path:
    return Path(settings_url.split(":///", 1)[1])


def test_store_files_are_0600_after_init_and_while_serving(gateways: Gateways) -> None:
    after_init: list[int] = []  # the store's mode once initialized, before the server starts
    srv = gateways.start(org="Test org", seed=lambda s: after_init.append(_mode(_store(s.database_url))))
    store = _store(srv.settings.database_url)
    assert after_init == [0o600]
    try:
        r = httpx.get(srv.v1 + "/organization/projects", headers={"Authorization": f"Bearer {srv.admin_key}"})
        assert r.status_code == 200
        wal, shm = Path(f"{store}-wal"), Path(f"{store}-shm")
        assert wal.exists() and shm.exists()  # WAL mode, a connection open: both exist
        assert {p.name: _mode(p) for p in (store, wal, shm)} == {p.name: 0o600 for p in (store, wal, shm)}
    finally:
        gateways.stop(srv)
    assert _mode(store) == 0o600


def test_a_store_left_readable_by_others_is_narrowed(gateways: Gateways) -> None:
    def left_readable(settings: Settings) -> None:  # before the server starts
        store = _store(settings.database_url)
        os.chmod(store, 0o644)
        Path(f"{store}-wal").write_bytes(b"")
        os.chmod(f"{store}-wal", 0o644)
        db.private_sqlite_files(store)
        assert _mode(store) == 0o600 and _mode(Path(f"{store}-wal")) == 0o600
        os.chmod(store, 0o644)

    srv = gateways.start(org="Test org", seed=left_readable)
    gateways.stop(srv)
    assert _mode(_store(srv.settings.database_url)) == 0o600


def test_making_another_engine_keeps_the_open_stores_locks(tmp_path: Path) -> None:
    """A second engine made while the store is open (the usage applier's own) must not drop the
    process's SQLite locks: closing any descriptor of the file would, and a CLI command closing its
    connection then believed it was the last one and deleted the live WAL ("disk I/O error", then
    "database disk image is malformed" in the server)."""
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "keyplane.db"
    db.private_sqlite_files(path)
    server = sqlite3.connect(path, isolation_level=None)
    server.execute("PRAGMA journal_mode=WAL")
    server.execute("CREATE TABLE t (x INTEGER)")
    server.execute("INSERT INTO t VALUES (1)")
    db.private_sqlite_files(path)  # what make_engine does for the second engine
    cli = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('INSERT INTO t VALUES (2)'); c.close()"
    )
    subprocess.run([sys.executable, "-c", cli, str(path)], check=True, timeout=60)
    assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists(), "another process removed the live WAL"
    server.execute("INSERT INTO t VALUES (3)")
    assert server.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    assert server.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    server.close()
