"""The SQLite store and its -wal/-shm files are private to the user (0600), like secret.key (#12.16)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyplane.store import db
from tests.support import init_org, make_settings, start_server


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


def test_store_files_are_0600_after_init_and_while_serving(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "h")
    init = init_org(settings)
    store = _store(settings.database_url)
    assert _mode(store) == 0o600
    srv = start_server(settings, init)
    try:
        r = httpx.get(srv.v1 + "/organization/projects", headers={"Authorization": f"Bearer {srv.admin_key}"})
        assert r.status_code == 200
        wal, shm = Path(f"{store}-wal"), Path(f"{store}-shm")
        assert wal.exists() and shm.exists()  # WAL mode, a connection open: both exist
        assert {p.name: _mode(p) for p in (store, wal, shm)} == {p.name: 0o600 for p in (store, wal, shm)}
    finally:
        srv.stop()
    assert _mode(store) == 0o600


def test_a_store_left_readable_by_others_is_narrowed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "h")
    init = init_org(settings)
    store = _store(settings.database_url)
    os.chmod(store, 0o644)
    Path(f"{store}-wal").write_bytes(b"")
    os.chmod(f"{store}-wal", 0o644)
    db.private_sqlite_files(store)
    assert _mode(store) == 0o600 and _mode(Path(f"{store}-wal")) == 0o600
    os.chmod(store, 0o644)
    srv = start_server(settings, init)
    srv.stop()
    assert _mode(store) == 0o600
