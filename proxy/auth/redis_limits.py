"""Per-key rpm/tpm across machines, through Redis (`[cluster] redis_url`).

Called by `proxy.auth.admission` after the machine's own table
(`proxy.auth.limits`) admitted a request: one Lua script, one round trip,
checks and counts the key's sliding window (one-second buckets in two hashes,
the same rule as the local table, on Redis's clock so that machines agree).
Settling a reservation (the real token count) is queued and sent in one
pipeline per turn of the event loop.

When Redis cannot be reached the gateway falls back to per-machine limits
(fail-open to the local table: each machine still enforces every key's limits
on its own traffic), logs `redis_unreachable` once, shows it in
`GET /admin/health`, and probes Redis every `PROBE_INTERVAL_S` until it
answers again (`redis_restored`). No request waits on an unreachable Redis for
more than `TIMEOUT_S`, and only the requests in flight when it went away do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from structlog.typing import FilteringBoundLogger

from proxy.auth.limits import WINDOW_S

TIMEOUT_S = 0.25
PROBE_INTERVAL_S = 1.0

ADMIT_LUA = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local rpm, tpm, need, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local function load(key)
  local flat = redis.call('HGETALL', key)
  local buckets, total = {}, 0
  for i = 1, #flat, 2 do
    local s, c = tonumber(flat[i]), tonumber(flat[i + 1])
    if s <= sec - window then redis.call('HDEL', key, flat[i])
    elseif c > 0 then buckets[#buckets + 1] = {s, c}; total = total + c end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return buckets, total
end
local function untilfree(buckets, free)
  if free <= 0 then return 0 end
  local freed = 0
  for _, b in ipairs(buckets) do
    freed = freed + b[2]
    if freed >= free then return math.max(b[1] + window - now, 0) end
  end
  return window
end
local rb, rused = load(KEYS[1])
local tb, tused = load(KEYS[2])
local refused, retry = 0, 0
if rpm >= 0 and rused + 1 > rpm then
  refused = 1; retry = untilfree(rb, rused - rpm + 1)
elseif tpm >= 0 and tused + need > tpm and tused > 0 then
  refused = 2; retry = untilfree(tb, tused + need - tpm)
end
if refused == 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('EXPIRE', KEYS[1], window + 5)
  rused = rused + 1; rb[#rb + 1] = {sec, 1}
  if need > 0 then
    redis.call('HINCRBY', KEYS[2], sec, need)
    redis.call('EXPIRE', KEYS[2], window + 5)
    tused = tused + need; tb[#tb + 1] = {sec, need}
  end
end
return {refused, rused, tused, tostring(retry), tostring(untilfree(rb, 1)),
  tostring(untilfree(tb, 1)), sec}
"""


@dataclass(frozen=True, slots=True)
class RemoteWindow:
    admitted: bool
    refused_by: str | None
    requests: int
    tokens: int
    retry_after_s: float
    reset_requests_s: float
    reset_tokens_s: float
    second: int


class RedisLimits:
    def __init__(self, url: str, prefix: str, log: FilteringBoundLogger) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        self._script = self._client.register_script(ADMIT_LUA)
        self._prefix = prefix
        self._log = log
        self.up = True
        self.last_error: str | None = None
        self._queue: list[tuple[str, int, int]] = []
        self._flushing = False
        self._probe: asyncio.Task[None] | None = None

    def _keys(self, key_id: str) -> list[str]:
        # a hash tag, so that both keys of one API key live on one Redis Cluster slot
        return [f"{self._prefix}{{{key_id}}}:req", f"{self._prefix}{{{key_id}}}:tok"]

    async def start(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._down(exc)
        else:
            self._log.info("limits", mode="redis", message="per-key limits shared through Redis")

    def mode(self) -> dict[str, object]:
        return {
            "mode": "redis" if self.up else "local_fallback",
            "redis": "up" if self.up else "unreachable",
            "last_error": self.last_error,
        }

    def _down(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        if not self.up:
            return
        self.up = False
        self._log.warning(
            "redis_unreachable",
            error=type(exc).__name__,
            message="falling back to per-machine limits until Redis answers again",
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while not self.up:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await self._client.ping()
            except (RedisError, OSError) as exc:
                self.last_error = type(exc).__name__
                continue
            self.up = True
            self._log.info("redis_restored", message="per-key limits shared through Redis again")

    async def admit(
        self, key_id: str, rpm: int | None, tpm: int | None, tokens: int
    ) -> RemoteWindow | None:
        """The key's shared window after counting this request; None when Redis
        is unreachable (the local decision stands)."""
        if not self.up:
            return None
        try:
            args = [-1 if rpm is None else rpm, -1 if tpm is None else tpm, tokens, WINDOW_S]
            raw = await self._script(keys=self._keys(key_id), args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            self._down(exc)
            return None
        refused, used_r, used_t, retry, reset_r, reset_t, second = raw
        return RemoteWindow(
            admitted=refused == 0,
            refused_by={0: None, 1: "rpm", 2: "tpm"}[int(refused)],
            requests=int(used_r),
            tokens=int(used_t),
            retry_after_s=float(retry),
            reset_requests_s=float(reset_r),
            reset_tokens_s=float(reset_t),
            second=int(second),
        )

    def settle(self, key_id: str, second: int, delta: int) -> None:
        """Correct a token reservation by `delta`, in the next pipeline."""
        if not self.up or delta == 0:
            return
        self._queue.append((self._keys(key_id)[1], second, delta))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # gather what this turn of the loop settled
        batch, self._queue = self._queue, []
        self._flushing = False
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, second, delta in batch:
                    pipe.hincrby(key, str(second), delta)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._down(exc)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._client.aclose()
