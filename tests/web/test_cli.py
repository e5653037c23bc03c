"""`keyplane users set-password` and `keyplane users reset-2fa`."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.store import db
from keyplane.store.models import AuditLog, User
from keyplane.web import auth


@pytest.fixture
def cli(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KEYPLANE_HOME", str(home))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", "")
    monkeypatch.delenv("KEYPLANE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0, input: str | None = None):
        res = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        assert res.exit_code == code, (res.stdout, res.stderr)
        return res

    run("init", "--json")
    run.url = f"sqlite+aiosqlite:///{(home / 'keyplane.db').resolve()}"  # type: ignore[attr-defined]
    return run


def _owner(url: str) -> tuple[User, list[AuditLog]]:
    async def go():
        engine = db.make_engine(url)
        try:
            async with db.sessionmaker(engine)() as s:
                u = (await s.execute(select(User).where(User.email == "owner@example.com"))).scalar_one()
                a = list((await s.execute(select(AuditLog).where(AuditLog.type == "user.updated"))).scalars())
                return u, a
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_set_password_prompt_and_stdin(cli):
    res = cli("users", "set-password", "owner@example.com", input="a long password 1\na long password 1\n")
    assert "password set for owner@example.com" in res.stdout
    assert "a long password 1" not in res.stdout.replace("New password", "")  # hidden input is not echoed
    u, audits = _owner(cli.url)
    assert auth.verify_password(u.password_hash, "a long password 1") and u.password_hash.startswith("$argon2")
    cli("users", "set-password", "owner@example.com", "--password-stdin", input="another password 2\n")
    u, audits = _owner(cli.url)
    assert auth.verify_password(u.password_hash, "another password 2")
    assert len(audits) == 2 and "another password" not in audits[-1].details
    res = cli("users", "set-password", "owner@example.com", "--password-stdin", input="short\n", code=1)
    assert "at least 12 characters" in res.stderr
    res = cli("users", "set-password", "nobody@example.com", "--password-stdin", input="long enough pw\n", code=1)
    assert "No user found" in res.stderr


def test_reset_2fa(cli):
    async def enrol(url: str) -> None:
        engine = db.make_engine(url)
        try:
            async with db.sessionmaker(engine)() as s, s.begin():
                u = (await s.execute(select(User))).scalars().first()
                u.totp_secret, u.totp_enabled, u.recovery_codes = "sealed", True, "[]"
        finally:
            await engine.dispose()

    asyncio.run(enrol(cli.url))
    res = cli("users", "reset-2fa", "owner@example.com")
    assert "reset for owner@example.com" in res.stdout
    u, _ = _owner(cli.url)
    assert not u.totp_enabled and u.totp_secret is None and u.recovery_codes is None
