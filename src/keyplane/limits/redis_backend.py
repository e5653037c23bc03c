"""The fleet limiter: budgets, reservations and GCRA buckets in Redis, one Lua script per step.

Every instance runs the same scripts against the same keys, with Redis TIME as the clock, so N
instances enforce exactly what one would (DESIGN.md "Single node and fleet"). Admission is one
EVALSHA: it purges expired reservations, checks every bucket and budget, and takes from all of them
or from none. Settle is one more.

Keys, all under one hash tag so that a Redis Cluster keeps them in one slot:

    {prefix}:seeded          set once the budget counters were rebuilt from the SQL ledger
    {prefix}:b:<budget>      hash: spent, reserved (micro-dollars); base (seeded from SQL)
    {prefix}:z:<budget>      sorted set of live reservations: member "<rid>:<amount>", score expiry (µs)
    {prefix}:g:<bucket>      hash: rm, tm, rd, td (GCRA TAT per limit, µs)

A reservation whose process died is dropped by the next admission on that budget once its score
(expiry) is past. When Redis loses its data the ``seeded`` marker goes with it, admission answers
:class:`Unseeded`, and the caller rebuilds the counters from SQL (:meth:`RedisLimiter.seed`).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from keyplane.limits import Bucket, BudgetRef, Denied, Granted, Reservation, Unseeded

MAX_CONNECTIONS = 64

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local PER = {60000000, 60000000, 86400000000, 86400000000}
local F = {'rm', 'tm', 'rd', 'td'}
"""

# KEYS: seeded, nb budget hashes, nb reservation sets, ng buckets
# ARGV: member, ttl_us, cost, tokens, nb, ng, (limit, key_ttl) * nb, (rpm, tpm, rpd, tpd) * ng
ADMIT = _COMMON + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local nb = tonumber(ARGV[5])
local ng = tonumber(ARGV[6])
local a = 7 + 2 * nb
local news = {}
local worst = nil
for j = 1, ng do
  local g = KEYS[1 + 2 * nb + j]
  local st = redis.call('HMGET', g, 'rm', 'tm', 'rd', 'td')
  local new = {0, 0, 0, 0}
  for k = 1, 4 do
    local lim = tonumber(ARGV[a + k - 1])
    if lim > 0 then
      local units = 1
      if k % 2 == 0 then units = tokens end
      if units > lim then return {0, 3, j, k, units} end
      local tat = tonumber(st[k]) or 0
      local base = tat
      if base < now then base = now end
      local nt = base + math.ceil(units * PER[k] / lim)
      if nt - now <= PER[k] then
        new[k] = nt
      else
        local wait = nt - PER[k] - now
        if worst == nil or wait > worst[6] then
          local held = tat - now
          if held < 0 then held = 0 end
          local left = math.floor((PER[k] - held) * lim / PER[k])
          if left < 0 then left = 0 end
          worst = {0, 2, j, k, lim - left, wait}
        end
      end
    end
  end
  news[j] = new
  a = a + 4
end
for i = 1, nb do
  local h = KEYS[1 + i]
  local z = KEYS[1 + nb + i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #expired > 0 then
    local sum = 0
    for _, m in ipairs(expired) do sum = sum + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    if sum > 0 then redis.call('HINCRBY', h, 'reserved', 0 - sum) end
  end
  local limit = tonumber(ARGV[5 + 2 * i])
  if limit >= 0 then
    local v = redis.call('HMGET', h, 'spent', 'reserved')
    local s = tonumber(v[1]) or 0
    local r = tonumber(v[2]) or 0
    if s + r + cost > limit then return {0, 1, i, s, r} end
  end
end
if worst then return worst end
if cost > 0 then
  for i = 1, nb do
    local h = KEYS[1 + i]
    local z = KEYS[1 + nb + i]
    redis.call('HINCRBY', h, 'reserved', cost)
    redis.call('ZADD', z, now + ttl, member)
    local kttl = tonumber(ARGV[6 + 2 * i])
    if kttl > 0 then
      redis.call('EXPIRE', h, kttl)
      redis.call('EXPIRE', z, kttl)
    end
  end
end
local out = {1, now}
for j = 1, ng do
  local g = KEYS[1 + 2 * nb + j]
  local new = news[j]
  local far = 0
  for k = 1, 4 do
    if new[k] > 0 then
      redis.call('HSET', g, F[k], string.format('%d', new[k]))
      if new[k] > far then far = new[k] end
    end
    out[#out + 1] = string.format('%d', new[k])
  end
  if far > 0 then redis.call('PEXPIRE', g, math.floor((far - now) / 1000) + 1000) end
end
return out
"""

# KEYS: nb budget hashes, nb reservation sets, ng buckets
# ARGV: member, amount, actual, token_delta, nb, ng, key_ttl * nb, (tpm, tpd) * ng
SETTLE = _COMMON + """
local member = ARGV[1]
local amount = tonumber(ARGV[2])
local actual = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local nb = tonumber(ARGV[5])
local ng = tonumber(ARGV[6])
for i = 1, nb do
  local h = KEYS[i]
  if amount > 0 and redis.call('ZREM', KEYS[nb + i], member) == 1 then
    redis.call('HINCRBY', h, 'reserved', 0 - amount)
  end
  if actual > 0 then
    redis.call('HINCRBY', h, 'spent', actual)
    local kttl = tonumber(ARGV[6 + i])
    if kttl > 0 then redis.call('EXPIRE', h, kttl) end
  end
end
if delta ~= 0 then
  local a = 7 + nb
  for j = 1, ng do
    local g = KEYS[2 * nb + j]
    for n, k in ipairs({2, 4}) do
      local lim = tonumber(ARGV[a + n - 1])
      if lim > 0 then
        local tat = tonumber(redis.call('HGET', g, F[k])) or now
        local nt
        if delta > 0 then
          if tat < now then tat = now end
          nt = tat + math.ceil(delta * PER[k] / lim)
        else
          nt = tat - math.floor(-delta * PER[k] / lim)
          if nt < now then nt = now end
        end
        redis.call('HSET', g, F[k], string.format('%d', nt))
        redis.call('PEXPIRE', g, math.floor((nt - now) / 1000) + 1000)
      end
    end
    a = a + 2
  end
end
return 1
"""

# KEYS: budget hashes; ARGV: (spent, key_ttl) per key. A counter is seeded once (field `base`).
SEED = """
for i = 1, #KEYS do
  local h = KEYS[i]
  if redis.call('HSETNX', h, 'base', 1) == 1 then
    local v = tonumber(ARGV[2 * i - 1])
    if v ~= 0 then redis.call('HINCRBY', h, 'spent', v) end
    local ttl = tonumber(ARGV[2 * i])
    if ttl > 0 then redis.call('EXPIRE', h, ttl) end
  end
end
return 1
"""


class RedisLimiter:
    def __init__(self, url: str, prefix: str, reservation_ttl: float) -> None:
        # A bounded pool that waits for a free connection rather than failing under a burst.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=10)
        self.redis: Any = aioredis.Redis(connection_pool=pool, decode_responses=False)
        self.base = "{" + prefix + "}"
        self.seeded_key = self.base + ":seeded"
        self.ttl_us = int(reservation_ttl * 1_000_000)
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)
        self._seed = self.redis.register_script(SEED)

    def _b(self, key: str) -> str:
        return f"{self.base}:b:{key}"

    def _z(self, key: str) -> str:
        return f"{self.base}:z:{key}"

    def _g(self, key: str) -> str:
        return f"{self.base}:g:{key}"

    async def admit(self, rid: str, budgets: tuple[BudgetRef, ...], buckets: tuple[Bucket, ...], cost: int,
                    tokens: int) -> Granted | Denied:
        keys = [self.seeded_key]
        keys.extend(self._b(b.key) for b in budgets)
        keys.extend(self._z(b.key) for b in budgets)
        keys.extend(self._g(g.key) for g in buckets)
        args: list[Any] = [f"{rid}:{cost}", self.ttl_us, cost, tokens, len(budgets), len(buckets)]
        for b in budgets:
            args.append(-1 if b.limit is None else b.limit)
            args.append(b.ttl)
        for g in buckets:
            args.extend(g.limits)
        r = await self._admit(keys=keys, args=args)
        code = int(r[0])
        if code == 1:
            v = [int(x) for x in r[2:]]
            return Granted(int(r[1]), [(v[i], v[i + 1], v[i + 2], v[i + 3]) for i in range(0, len(v), 4)])
        if code == -1:
            raise Unseeded()
        kind = int(r[1])
        if kind == 1:
            return Denied("budget", int(r[2]) - 1, spent=int(r[3]), reserved=int(r[4]))
        if kind == 3:
            return Denied("too_large", int(r[2]) - 1, int(r[3]) - 1, used=int(r[4]))
        return Denied("rate", int(r[2]) - 1, int(r[3]) - 1, used=int(r[4]), wait_us=int(r[5]))

    async def settle(self, res: Reservation, actual_cost: int, actual_tokens: int) -> None:
        keys = [self._b(b.key) for b in res.budgets]
        keys.extend(self._z(b.key) for b in res.budgets)
        keys.extend(self._g(g.key) for g in res.buckets)
        args: list[Any] = [f"{res.rid}:{res.amount}", res.amount, actual_cost, actual_tokens - res.tokens,
                           len(res.budgets), len(res.buckets)]
        args.extend(b.ttl for b in res.budgets)
        for g in res.buckets:
            args.extend((g.limits[1], g.limits[3]))
        await self._settle(keys=keys, args=args)

    async def is_seeded(self) -> bool:
        return bool(await self.redis.exists(self.seeded_key))

    async def seed(self, spent: dict[str, int], ttls: dict[str, int]) -> None:
        items = list(spent.items())
        for i in range(0, len(items), 500):
            chunk = items[i:i + 500]
            args: list[Any] = []
            for key, value in chunk:
                args.extend((value, ttls.get(key, 0)))
            await self._seed(keys=[self._b(k) for k, _ in chunk], args=args)
        await self.redis.set(self.seeded_key, b"1")

    async def spent(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hmget(self._b(k), "spent", "reserved")
            rows = await pipe.execute()
        return {k: (int(r[0] or 0), int(r[1] or 0)) for k, r in zip(keys, rows, strict=True)}

    async def sweep(self) -> int:
        return 0  # expired reservations are dropped by the admission script itself

    async def delete_all(self) -> None:
        """Remove every key under the prefix (tests, `keyplane limits reset`)."""
        async for key in self.redis.scan_iter(match=self.base + ":*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
