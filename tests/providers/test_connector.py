"""The Admin API connector against the fake provider: paging, retries on 429/5xx/timeouts, no key in errors."""

from __future__ import annotations

import asyncio

import pytest

from keyplane.config import ProviderSection
from keyplane.providers.connector import Connector, ProviderError
from keyplane.providers.sync import fetch


def _conn(running, sleeps: list[float], timeout: float = 30.0, key: str | None = None) -> Connector:
    cfg = ProviderSection(name="acme", base_url=running.base_url, admin_key_env="ACME_ADMIN_KEY", timeout=timeout)

    async def sleep(s: float) -> None:
        sleeps.append(s)

    return Connector(cfg, {"ACME_ADMIN_KEY": key or running.fake.admin_key}, sleep=sleep)


def test_fetch_pages_through_every_list(fake_provider):
    async def go():
        conn = _conn(fake_provider, [])
        try:
            return await fetch(conn)
        finally:
            await conn.close()

    inv = asyncio.run(go())
    assert inv.counts() == {"project": 3, "user": 2, "service_account": 2, "api_key": 4, "admin_key": 1}
    # page_size 2: the project list came in two pages, the second asked after the first page's last id
    paths = [(p, q) for m, p, q in fake_provider.fake.requests if p.endswith("/organization/projects")]
    assert len(paths) == 2 and "after=proj_data" in paths[1][1]


def test_retries_429_with_retry_after_then_5xx_then_timeout(fake_provider):
    fake = fake_provider.fake
    fake.hang_seconds = 1.0
    fake.faults.extend([(429, 7), (503, None), (0, None)])
    sleeps: list[float] = []

    async def go():
        conn = _conn(fake_provider, sleeps, timeout=0.3)
        try:
            return await conn.list_all("/organization/users")
        finally:
            await conn.close()

    users = asyncio.run(go())
    assert [u["id"] for u in users] == ["user_alice", "user_bob"]
    assert sleeps[0] == 7.0  # the provider's retry-after, on the injected sleep
    assert len(sleeps) == 3


def test_gives_up_after_retries_and_never_shows_the_key(fake_provider):
    fake_provider.fake.faults.extend([(500, None)] * 10)

    async def go():
        conn = _conn(fake_provider, [])
        try:
            await conn.list_all("/organization/users")
        finally:
            await conn.close()

    with pytest.raises(ProviderError) as e:
        asyncio.run(go())
    assert e.value.status == 500 and fake_provider.fake.admin_key not in str(e.value)


def test_wrong_key_is_refused_without_retry(fake_provider):
    async def go():
        conn = _conn(fake_provider, [], key="sk-admin-wrongwrongwrong")
        try:
            await conn.list_all("/organization/projects")
        finally:
            await conn.close()

    with pytest.raises(ProviderError) as e:
        asyncio.run(go())
    assert e.value.status == 401 and "wrongwrong" not in str(e.value)
    assert len(fake_provider.fake.requests) == 1


def test_missing_env_var_is_named():
    cfg = ProviderSection(name="acme", admin_key_env="NOPE_KEY")
    with pytest.raises(ProviderError, match="NOPE_KEY"):
        Connector(cfg, {})


def test_ids_that_would_change_the_path_are_refused(fake_provider):
    async def go():
        conn = _conn(fake_provider, [])
        try:
            await conn.delete_key("proj_data", "../../users/user_bob")
        finally:
            await conn.close()

    with pytest.raises(ProviderError, match="invalid provider object id"):
        asyncio.run(go())
    assert fake_provider.fake.requests == []
