"""The Lua scripts of the Redis limiter (limits/redis_backend.py), each run with one EVALSHA.

Redis TIME is their clock, so every instance runs the same arithmetic against the same keys. ADMIT purges
expired reservations, checks every bucket and budget and takes from all of them or from none; SETTLE settles
(or, strict, replays or releases) one reservation; SEED and TOP_UP rebuild the budget counters from SQL and the
journal (RedisLimiter.seed, RedisLimiter.top_up).
"""

from __future__ import annotations

from keyplane.limits import REBUILD_GRACE_US

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local PER = {60000000, 60000000, 86400000000, 86400000000}
local F = {'rm', 'tm', 'rd', 'td'}
"""
_COMMON += f"local GRACE = {REBUILD_GRACE_US}\n"

# KEYS: seeded, nb budget hashes, nb reservation sets, ng buckets
# ARGV: member, ttl_us, cost, tokens, nb, ng, (limit, key_ttl) * nb, (rpm, tpm, rpd, tpd) * ng
ADMIT = (
    _COMMON
    + """
local ep = redis.call('GET', KEYS[1])
if not ep then return {-1} end
local lost = tonumber(string.match(ep, ':(%d+)$')) or 0
local member = ARGV[1]
if tonumber(ARGV[5]) > 0 and tonumber(ARGV[3]) > 0 and redis.call('ZSCORE', KEYS[2 + tonumber(ARGV[5])], member) then
  local out = {1, now}  -- the same admission again (a retried command): already taken
  for j = 1, 4 * tonumber(ARGV[6]) do out[#out + 1] = '0' end
  return out
end
if lost > 0 and now < lost + GRACE and tonumber(ARGV[3]) > 0 then
  -- rebuilt after a loss moments ago: the running requests' reservations are being held again; nothing against a limit
  for i = 1, tonumber(ARGV[5]) do
    if tonumber(ARGV[5 + 2 * i]) >= 0 then return {-2} end
  end
end
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
  if lost > 0 and not st[1] and not st[2] and not st[3] and not st[4] then
    -- a bucket Redis no longer holds after a loss: as if used up at the rebuild (days: half)
    st = {lost + PER[1], lost + PER[2], lost + PER[3] / 2, lost + PER[4] / 2}
  end
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
)

# KEYS: nb budget hashes, nb reservation sets, ng buckets
# ARGV: member, amount, actual, token_delta, nb, ng, strict, key_ttl * nb, (tpm, tpd) * ng
# strict (a replayed settle, a release): only while the reservation is still held; returns 0 otherwise.
SETTLE = (
    _COMMON
    + """
local member = ARGV[1]
local amount = tonumber(ARGV[2])
local actual = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local nb = tonumber(ARGV[5])
local ng = tonumber(ARGV[6])
local strict = tonumber(ARGV[7])
local held = 0
for i = 1, nb do
  if amount > 0 and redis.call('ZREM', KEYS[nb + i], member) == 1 then
    redis.call('HINCRBY', KEYS[i], 'reserved', 0 - amount)
    held = held + 1
  end
end
if strict == 1 and held == 0 then return 0 end
for i = 1, nb do
  local h = KEYS[i]
  if actual > 0 then
    redis.call('HINCRBY', h, 'spent', actual)
    local kttl = tonumber(ARGV[7 + i])
    if kttl > 0 then redis.call('EXPIRE', h, kttl) end
  end
end
if delta ~= 0 then
  local a = 8 + nb
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
)

# KEYS: the reservation sets of each reservation's budgets, in turn; ARGV: ttl_us, (member, nb) per reservation.
# A member still in a set (its amount still counted in the budget's `reserved`) gets the expiry now + ttl_us, unless
# it has a later one; a member no longer there (settled, dropped) is not added again. Returns how many are held.
RENEW = (
    _COMMON
    + """
local expiry = now + tonumber(ARGV[1])
local k = 0
local n = 0
for a = 2, #ARGV, 2 do
  local member = ARGV[a]
  local held = 0
  for i = 1, tonumber(ARGV[a + 1]) do
    k = k + 1
    local score = redis.call('ZSCORE', KEYS[k], member)
    if score then
      held = 1
      if tonumber(score) < expiry then redis.call('ZADD', KEYS[k], 'XX', expiry, member) end
    end
  end
  n = n + held
end
return n
"""
)

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

# KEYS: marker, budget hashes; ARGV: marker ttl, amount per hash. Adds once per marker.
TOP_UP = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
for i = 2, #KEYS do
  local v = tonumber(ARGV[i])
  if v ~= 0 then redis.call('HINCRBY', KEYS[i], 'spent', v) end
end
return 1
"""
