"""The Lua run by ``redis_limits``: each is one EVALSHA, atomic, over keys of one hash slot.

The GCRA branch mirrors ``limits.gcra_step``/``gcra_adjust`` operation for operation (the
integration tests replay sequences through both and compare). Times are the caller's ``now``
(epoch seconds, ARGV), never Redis' clock, so that tests drive time and the arithmetic matches
Python's. Floats cross the boundary as ``%.17g`` strings: Lua's ``tostring`` keeps 14 digits,
which at epoch scale is a tenth of a millisecond, and Redis truncates returned Lua numbers to
integers. TTLs are relative (PSETEX/PEXPIRE) so they hold whatever the caller's clock says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)  # what EVALSHA names it by, computed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS: one per limit (a GCRA tat string, or a parallel lease sorted set).
# ARGV: now, request_id, and one space-separated spec with 4 words per limit: kind ('g' | 'p'),
#   g: interval_s, capacity_s, cost      p: limit, lease_s, unused
# Returns one space-separated string: all_allowed, then per limit: allowed, retry_after_s,
# g: debt_s | p: slots in use. (One string and one spec, not arrays: redis-py's pure-Python
# protocol code costs more per array element than the whole check costs Redis.)
# All or nothing: state is written only once every limit has said yes.
ADMIT = Script(
    "admit",
    """
local now = tonumber(ARGV[1])
local request_id = ARGV[2]
local SLACK = 1e-4
local function fmt(x) return string.format('%.17g', x) end
local spec = {}
for word in string.gmatch(ARGV[3], '%S+') do table.insert(spec, word) end
local out = {1}
local pending = {}
for i = 1, #KEYS do
  local at = (i - 1) * 4
  local kind = spec[at + 1]
  local a, b, c = tonumber(spec[at + 2]), tonumber(spec[at + 3]), tonumber(spec[at + 4])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    local base = math.max(tat, now)
    local debt = base - now
    local increment = c * a
    local after = debt + increment
    if after - b <= math.min(SLACK, a / 100) or (debt <= 0 and increment > b) then
      pending[i] = base + increment
      table.insert(out, 1); table.insert(out, '0'); table.insert(out, fmt(after))
    else
      out[1] = 0
      local retry = after - b
      if increment > b then retry = debt end
      table.insert(out, 0); table.insert(out, fmt(retry)); table.insert(out, fmt(debt))
    end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZSCORE', KEYS[i], request_id)
    local in_use = redis.call('ZCARD', KEYS[i])
    if held or in_use < a then
      pending[i] = now + b
      if not held then in_use = in_use + 1 end
      table.insert(out, 1); table.insert(out, '0'); table.insert(out, in_use)
    else
      out[1] = 0
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      table.insert(out, 0); table.insert(out, fmt(math.min(1.0, tonumber(first[2]) - now))); table.insert(out, in_use)
    end
  end
end
if out[1] == 1 then
  for i = 1, #KEYS do
    local at = (i - 1) * 4
    if spec[at + 1] == 'g' then
      if pending[i] > now then
        redis.call('PSETEX', KEYS[i], math.ceil((pending[i] - now) * 1000) + 1, fmt(pending[i]))
      end
    else
      redis.call('ZADD', KEYS[i], pending[i], request_id)
      redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(spec[at + 3]) * 1000) + 1000)
    end
  end
end
return table.concat(out, ' ')
""",
)

# KEYS: one per limit. ARGV: now, request_id, then 3 per limit: kind, interval_s, delta.
#   g: move tat by delta units (token reconciliation, or a refund with a negative delta)
#   p: give back request_id's slot (release, or a refund)
ADJUST = Script(
    "adjust",
    """
local now = tonumber(ARGV[1])
local request_id = ARGV[2]
for i = 1, #KEYS do
  local at = 2 + (i - 1) * 3
  if ARGV[at + 1] == 'g' then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    local moved = math.max(math.max(tat, now) + tonumber(ARGV[at + 3]) * tonumber(ARGV[at + 2]), now)
    if moved > now then
      redis.call('PSETEX', KEYS[i], math.ceil((moved - now) * 1000) + 1, string.format('%.17g', moved))
    else
      redis.call('DEL', KEYS[i])
    end
  else
    redis.call('ZREM', KEYS[i], request_id)
  end
end
return 1
""",
)

# Budget keys, all of one (scope, period): KEYS[1] hash {spent, reserved} in micro-USD,
# KEYS[2] sorted set request_id -> reservation expiry, KEYS[3] hash request_id -> micro-USD held,
# KEYS[4] sorted set of settled request ids -> when (makes settle and reserve idempotent).
# Expired reservations are dropped first (bounded per call), so a request that never finished
# stops counting against the budget once its reservation lapses.
_DROP_EXPIRED = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
if #expired > 0 then
  local freed = 0
  for _, rid in ipairs(expired) do
    freed = freed + (tonumber(redis.call('HGET', KEYS[3], rid)) or 0)
    redis.call('HDEL', KEYS[3], rid)
    redis.call('ZREM', KEYS[2], rid)
  end
  redis.call('HINCRBY', KEYS[1], 'reserved', -freed)
end
"""

# ARGV: now, request_id, micro, limit_micro, reservation_expiry, key_ttl_ms.
# Returns {allowed, spent_micro, reserved_micro}.
RESERVE = Script(
    "reserve",
    """
local now = tonumber(ARGV[1])
local request_id = ARGV[2]
local micro = tonumber(ARGV[3])
"""
    + _DROP_EXPIRED
    + """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent')) or 0
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0
if redis.call('HEXISTS', KEYS[3], request_id) == 1 or redis.call('ZSCORE', KEYS[4], request_id) then
  return {1, spent, reserved}
end
if spent + reserved + micro > tonumber(ARGV[4]) then
  return {0, spent, reserved}
end
redis.call('ZADD', KEYS[2], ARGV[5], request_id)
redis.call('HSET', KEYS[3], request_id, micro)
redis.call('HINCRBY', KEYS[1], 'reserved', micro)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return {1, spent, reserved + micro}
""",
)

# ARGV: now, request_id, real_micro, key_ttl_ms, settled_memory_s. Returns 1, or 0 if already settled.
SETTLE = Script(
    "settle",
    """
local now = tonumber(ARGV[1])
local request_id = ARGV[2]
if redis.call('ZSCORE', KEYS[4], request_id) then return 0 end
local held = tonumber(redis.call('HGET', KEYS[3], request_id))
if held then
  redis.call('HDEL', KEYS[3], request_id)
  redis.call('ZREM', KEYS[2], request_id)
  redis.call('HINCRBY', KEYS[1], 'reserved', -held)
end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3])
redis.call('ZADD', KEYS[4], now, request_id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
"""
    + _DROP_EXPIRED
    + """
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return 1
""",
)

ALL_SCRIPTS = (ADMIT, ADJUST, RESERVE, SETTLE)
