"""The fleet limiter's Redis connections pack their commands with hiredis in one call (limits/redis_backend.py
``_PackedByHiredis``): the same bytes as redis-py's own packing, without its per-argument Python encoder, and
redis-py's packing (and errors) for every command of another shape."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis._parsers.encoders import Encoder
from redis.exceptions import DataError

from keyplane.limits.redis_backend import RedisLimiter, _PackedByHiredis, packed_by_hiredis
from tests.limits.conftest import REDIS_URL

SHA = "a" * 40
# The shapes keyplane sends: the admission script's keys, member and limits (ints past 64 bits included), text that
# is not ASCII, bytes.
PACKED_BY_HIREDIS: list[tuple[Any, ...]] = [
    ("EVALSHA", SHA, 3, "{kp}:epoch", "{kp}:b:org_1:2026-12", "{kp}:g:p:gpt-4o", "req_1:25", 300_000_000, 25, -1),
    ("EVALSHA", SHA, 1, "{kp}:z:ключ", "req_é:1", 10**12, 2**70, -(2**70), 0),
    (b"SET", b"k\x00\xff", b"", "v"),
    ("ZSCORE", "{kp}:z:x", "req_1:5"),
    ("PING",),
]


class Small(int):
    """An int subclass (as a bool or an IntEnum is): redis-py's to encode."""


# Left to redis-py: a command name it splits, floats (its repr), a bytearray or memoryview (copied), an int subclass.
PACKED_BY_REDIS_PY: list[tuple[Any, ...]] = [
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETNAME", b"kp"),
    ("SET", "k", 0.1),
    ("SET", "k", 1e300),
    ("SET", bytearray(b"k"), memoryview(b"v")),
    ("HSET", "h", "f", Small(7)),
]


ENCODED: list[Any] = []  # what redis-py's encoder was given


class RecordingEncoder(Encoder):
    def encode(self, value: Any) -> Any:
        ENCODED.append(value)
        return super().encode(value)


def _connections() -> tuple[aioredis.Connection, aioredis.Connection]:
    """redis-py's own connection and the packed one, its encoder recording (not connected: packing needs no
    server)."""
    ENCODED.clear()
    return aioredis.Connection(), packed_by_hiredis(aioredis.Connection)(encoder_class=RecordingEncoder)


@pytest.mark.parametrize("args", PACKED_BY_HIREDIS, ids=lambda a: str(a[0]))
def test_hiredis_packs_the_same_bytes_without_redis_pys_encoder(args: tuple[Any, ...]) -> None:
    plain, packed = _connections()
    assert b"".join(packed.pack_command(*args)) == b"".join(plain.pack_command(*args))
    assert ENCODED == []


@pytest.mark.parametrize("args", PACKED_BY_REDIS_PY, ids=lambda a: repr(a[0])[:20])
def test_other_commands_are_packed_by_redis_py(args: tuple[Any, ...]) -> None:
    plain, packed = _connections()
    assert b"".join(packed.pack_command(*args)) == b"".join(plain.pack_command(*args))
    assert ENCODED  # redis-py's own path (its encoder) packed it


def test_a_bool_is_refused_as_redis_py_refuses_it() -> None:
    plain, packed = _connections()
    for conn in (plain, packed):
        with pytest.raises(DataError, match="bool"):
            conn.pack_command("SET", "k", True)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Connection),
        ("rediss://127.0.0.1:6380/0", aioredis.SSLConnection),
        ("unix:///tmp/redis.sock", aioredis.UnixDomainSocketConnection),
    ],
)
def test_the_limiter_packs_on_every_kind_of_connection(url: str, kind: type) -> None:
    async def check() -> None:
        lim = RedisLimiter(url, "kptest-packing", 1)
        try:
            cls = lim.redis.connection_pool.connection_class
            assert issubclass(cls, kind) and issubclass(cls, _PackedByHiredis)
        finally:
            await lim.close()

    asyncio.run(check())


@pytest.mark.redis
def test_commands_packed_by_hiredis_round_trip_through_redis(redis_prefix: str) -> None:
    async def check() -> None:
        lim = RedisLimiter(REDIS_URL, redis_prefix, 1)
        r = lim.redis
        key = f"{{{redis_prefix}}}:b:packing"
        try:
            await r.set(key, "ключ é")
            assert (await r.get(key)).decode() == "ключ é"
            await r.set(key, 2**70)
            assert int(await r.get(key)) == 2**70
            assert await r.eval("return ARGV[1] .. ARGV[2]", 1, key, "a", -5) == b"a-5"
            await r.delete(key)
        finally:
            await lim.close()

    asyncio.run(check())
