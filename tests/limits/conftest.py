from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from keyplane.limits.redis_backend import RedisLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test only; its keys are deleted afterwards."""
    prefix = f"kptest-{secrets.token_hex(4)}"
    yield prefix

    async def clean() -> None:
        lim = RedisLimiter(REDIS_URL, prefix, 1)
        await lim.delete_all()
        await lim.close()

    asyncio.run(clean())
