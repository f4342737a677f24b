"""Sliding windows in Redis: one Lua script decides a whole call, for every window it counts
against, in one round trip.

Each window is a sorted set of the calls it admitted (score: admission time in ms on Redis's
clock, member `<seq>:<cost>`) beside a hash holding the sum of their costs (`used`) and the
sequence number. The script drops what has left the window, admits the call only if it fits in
every window (all or none: a refused call counts nowhere), and says for each window how much
is used and in how many ms room comes back. Redis runs a script alone, so concurrent callers,
on any number of rate-limit replicas, can never admit more than a limit together; reading the
time inside the script gives every replica the same clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from .config import Bucket

KEY_PREFIX = "neural:ratelimit"

# KEYS[2i-1], KEYS[2i]: window i's log (sorted set) and counters (hash).
# ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its limit, its length in ms, the call's cost there.
# Returns {admitted (1|0), used_1, reset_ms_1, used_2, reset_ms_2, ...}: `used` after the call
# when admitted (before it when not); `reset_ms`, when refused, how long until the call would
# fit, else how long until the oldest call in the window leaves it.
DECIDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2

local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local used = {}
local admitted = true
for i = 1, n do
  local log, counters = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]),
    tonumber(ARGV[3 * i])
  local total = tonumber(redis.call('HGET', counters, 'used') or '0')
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #expired > 0 then
    for _, member in ipairs(expired) do
      total = total - cost_of(member)
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    redis.call('HSET', counters, 'used', total)
  end
  -- The log and its counters expire together; should only the hash be left, start afresh.
  if total ~= 0 and redis.call('ZCARD', log) == 0 then
    total = 0
    redis.call('HSET', counters, 'used', 0)
  end
  used[i] = total
  if total + cost > limit then
    admitted = false
  end
end

-- When `need` units of cost have left the window, oldest first. Every call costs at least 1,
-- so the oldest `need` calls always free enough (if the window holds that much).
local function freed_after(log, window, need)
  local oldest = redis.call('ZRANGE', log, 0, need - 1, 'WITHSCORES')
  local freed = 0
  for j = 1, #oldest, 2 do
    freed = freed + cost_of(oldest[j])
    if freed >= need then
      return math.max(0, tonumber(oldest[j + 1]) + window - now)
    end
  end
  return window
end

local result = {admitted and 1 or 0}
for i = 1, n do
  local log, counters = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]),
    tonumber(ARGV[3 * i])
  local need = 1
  if admitted then
    local seq = redis.call('HINCRBY', counters, 'seq', 1)
    redis.call('ZADD', log, now, seq .. ':' .. cost)
    used[i] = redis.call('HINCRBY', counters, 'used', cost)
    redis.call('PEXPIRE', log, window)
    redis.call('PEXPIRE', counters, window)
  elseif used[i] + cost > limit then
    need = used[i] + cost - limit
  end
  result[#result + 1] = used[i]
  result[#result + 1] = freed_after(log, window, need)
end
return result
"""


@dataclass(frozen=True)
class Charge:
    """One window a call counts against, and what the call costs there."""

    bucket: Bucket
    cost: int


@dataclass(frozen=True)
class WindowState:
    charge: Charge
    used: int  # units of cost in the window (after the call, if it was admitted)
    reset_ms: int  # until the call would fit (refused), or until the oldest call leaves
    fits: bool  # whether this window had room (the call is admitted only if every one had)

    @property
    def remaining(self) -> int:
        return max(0, self.charge.bucket.limit.requests - self.used)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    windows: list[WindowState]


class SlidingWindows:
    def __init__(self, client: aioredis.Redis, domain: str) -> None:
        self.client = client
        self.prefix = f"{KEY_PREFIX}:{domain}"
        # EVALSHA with the script's digest; redis-py loads the script again if Redis lost it.
        self._decide = client.register_script(DECIDE)

    async def decide(self, charges: Sequence[Charge]) -> Decision:
        """Admit the call in every window of `charges`, or in none."""
        if not charges:
            return Decision(True, [])
        keys: list[str] = []
        args: list[int] = []
        for c in charges:
            log = f"{self.prefix}:{c.bucket.key}"
            keys += [log, f"{log}:counters"]
            args += [c.bucket.limit.requests, c.bucket.limit.window_seconds * 1000, c.cost]
        result = await self._decide(keys=keys, args=args)
        admitted = bool(result[0])
        windows = []
        for i, c in enumerate(charges):
            used, reset_ms = int(result[1 + 2 * i]), int(result[2 + 2 * i])
            fits = admitted or used + c.cost <= c.bucket.limit.requests
            windows.append(WindowState(c, used, reset_ms, fits))
        return Decision(admitted, windows)
