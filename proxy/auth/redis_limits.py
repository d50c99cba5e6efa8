"""Per-key rpm, tpm and budgets across machines, through Redis (`[cluster] redis_url`).

Called by `proxy.auth.admission` after the machine's own table
(`proxy.auth.limits`) admitted a request: one Lua script, one round trip,
checks and counts the key's sliding window (one-second buckets in two hashes,
the same rule as the local table, on Redis's clock so that machines agree)
and, for a key with a budget, its spend in the budget's period: refused at or
over the cap, else this request's estimated cost is reserved. Settling (the
real token count, the real cost) is queued and sent in the pipeline of the
worker's next admission, before its script (so a worker's settles reach Redis
before its next check), or alone after `SETTLE_DELAY_S`. The scripts are
loaded at start and again when Redis says it lost them (NOSCRIPT), never
checked per pipeline.

Spend lives in one hash per key and period (`{prefix}{key id}:spend:total`,
`:spend:m<month>`, `:spend:d<day>`; a month's and a day's expire a day after
their period ends). Field `s` is the spend of every machine together. A
machine seeds it once with what it had already spent in that period (its own
table, itself seeded from its SQLite file) and marks itself with a field of
its name; from then on it sends only deltas, which `SETTLE_LUA` adds only to
hashes that machine has seeded (an unseeded hash gets the delta through the
seed). So a budget given to a key that already spent holds, a Redis that lost
its data is seeded again, and a new period starts from what each machine
spent in it.

When Redis cannot be reached the gateway falls back to per-machine limits
(fail-open to the local table: each machine still enforces every key's limits
on its own traffic), logs `redis_unreachable` once, shows it in
`GET /admin/health`, and probes Redis every `PROBE_INTERVAL_S` until it
answers again (`redis_restored`). No request waits on an unreachable Redis for
more than `TIMEOUT_S`, and only the requests in flight when it went away do.
Spend settled meanwhile is kept per key and period and sent before Redis is
used again.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError
from structlog.typing import FilteringBoundLogger

from proxy.auth.periods import period_end, period_name
from proxy.auth.windows import WINDOW_S

TIMEOUT_S = 0.25
PROBE_INTERVAL_S = 1.0
SETTLE_DELAY_S = 0.002  # how long settles wait for an admission to carry them

ADMIT_LUA = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local rpm, tpm, need, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local budget, ttl = tonumber(ARGV[5]), tonumber(ARGV[9])
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
local refused, retry, spent = 0, 0, 0
if budget >= 0 then
  -- the period's spend: seeded once per machine with what that machine had spent
  if redis.call('HSETNX', KEYS[3], ARGV[8], 1) == 1 then
    spent = tonumber(redis.call('HINCRBYFLOAT', KEYS[3], 's', ARGV[7]))
    if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
  else
    spent = tonumber(redis.call('HGET', KEYS[3], 's') or '0')
  end
  if spent >= budget then refused = 3 end
end
local windowed = rpm >= 0 or tpm >= 0
local rb, rused, tb, tused = {}, 0, {}, 0
if windowed and refused == 0 then
  rb, rused = load(KEYS[1])
  tb, tused = load(KEYS[2])
  if rpm >= 0 and rused + 1 > rpm then
    refused = 1; retry = untilfree(rb, rused - rpm + 1)
  elseif tpm >= 0 and tused + need > tpm and tused > 0 then
    refused = 2; retry = untilfree(tb, tused + need - tpm)
  end
end
if refused == 0 then
  if windowed then
    redis.call('HINCRBY', KEYS[1], sec, 1)
    redis.call('EXPIRE', KEYS[1], window + 5)
    rused = rused + 1; rb[#rb + 1] = {sec, 1}
    if need > 0 then
      redis.call('HINCRBY', KEYS[2], sec, need)
      redis.call('EXPIRE', KEYS[2], window + 5)
      tused = tused + need; tb[#tb + 1] = {sec, need}
    end
  end
  if budget >= 0 and tonumber(ARGV[6]) > 0 then
    spent = tonumber(redis.call('HINCRBYFLOAT', KEYS[3], 's', ARGV[6]))
  end
end
return {refused, rused, tused, tostring(retry), tostring(untilfree(rb, 1)),
  tostring(untilfree(tb, 1)), sec, tostring(spent)}
"""

# KEYS: spend hashes of one API key; ARGV[1]: this machine; ARGV[i + 1]: KEYS[i]'s
# delta. A hash this machine has not seeded is left alone: its seed (the
# machine's own spend, read when it seeds) will hold the delta already.
SETTLE_LUA = """
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], ARGV[1]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[i], 's', ARGV[i + 1])
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RemoteWindow:
    admitted: bool
    refused_by: str | None  # "rpm" | "tpm" | "budget" | None
    requests: int
    tokens: int
    retry_after_s: float
    reset_requests_s: float
    reset_tokens_s: float
    second: int
    spent: float  # the key's spend in its budget period, reservations included


_REFUSED_BY = {0: None, 1: "rpm", 2: "tpm", 3: "budget"}


class RedisLimits:
    def __init__(self, url: str, prefix: str, log: FilteringBoundLogger) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        self._script = self._client.register_script(ADMIT_LUA)
        self._settle_script = self._client.register_script(SETTLE_LUA)
        self._prefix = prefix
        self._log = log
        self.node = socket.gethostname()  # this machine, in each spend hash it seeded
        self.up = True
        self.last_error: str | None = None
        self._queue: list[tuple[str, int, int]] = []  # token buckets to correct
        self._spend: dict[str, dict[str, float]] = {}  # key id -> spend hash -> delta
        self._flushing = False
        self._probe: asyncio.Task[None] | None = None

    def _keys(self, key_id: str) -> list[str]:
        # a hash tag, so that every key of one API key lives on one Redis Cluster slot
        return [f"{self._prefix}{{{key_id}}}:req", f"{self._prefix}{{{key_id}}}:tok"]

    def spend_key(self, key_id: str, period: str, now: float) -> str:
        """The hash that holds the key's spend in the `period` that holds `now`."""
        return f"{self._prefix}{{{key_id}}}:spend:{period_name(period, now)}"

    async def start(self) -> None:
        try:
            await self._client.ping()
            await self._load_scripts()
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
                await self._load_scripts()
                await self._run(None)  # what was spent while it was away
            except (RedisError, OSError) as exc:
                self.last_error = type(exc).__name__
                continue
            self.up = True
            self._log.info("redis_restored", message="per-key limits shared through Redis again")

    async def admit(
        self,
        key_id: str,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        budget: tuple[float, str, float, float] | None = None,
    ) -> RemoteWindow | None:
        """The key's shared window (and spend) after counting this request; None
        when Redis is unreachable (the local decision stands). `budget`: (cap,
        its spend hash, this request's estimated cost to reserve, this machine's
        spend in the period: the seed if this machine has not seeded the hash)."""
        if not self.up:
            return None
        keys = self._keys(key_id)
        args: list[str | int | float] = [
            -1 if rpm is None else rpm,
            -1 if tpm is None else tpm,
            tokens,
            WINDOW_S,
        ]
        if budget is None:
            args += [-1, 0, 0, self.node, 0]
        else:
            cap, spend_key, cost, seed = budget
            keys.append(spend_key)
            args += [repr(cap), repr(cost), repr(seed), self.node, _ttl(spend_key)]
        try:
            raw = await self._run((keys, args))
        except (TimeoutError, RedisError, OSError) as exc:
            self._down(exc)
            return None
        refused, used_r, used_t, retry, reset_r, reset_t, second, spent = raw
        return RemoteWindow(
            admitted=refused == 0,
            refused_by=_REFUSED_BY[int(refused)],
            requests=int(used_r),
            tokens=int(used_t),
            retry_after_s=float(retry),
            reset_requests_s=float(reset_r),
            reset_tokens_s=float(reset_t),
            second=int(second),
            spent=float(spent),
        )

    def settle(self, key_id: str, second: int, delta: int) -> None:
        """Correct a token reservation by `delta`, in the next pipeline."""
        if not self.up or delta == 0:
            return
        self._queue.append((self._keys(key_id)[1], second, delta))
        self._schedule()

    def settle_spend(self, key_id: str, deltas: dict[str, float]) -> None:
        """Add to the key's spend hashes, in the next pipeline; kept while Redis
        is away and sent before it is used again."""
        queued = self._spend.setdefault(key_id, {})
        for name, delta in deltas.items():
            queued[name] = queued.get(name, 0.0) + delta
        if self.up:
            self._schedule()

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    def _take_spend(self) -> dict[str, dict[str, float]]:
        spend, self._spend = self._spend, {}
        return spend

    async def _flush(self) -> None:
        # settles wait up to SETTLE_DELAY_S for an admission to carry them
        await asyncio.sleep(SETTLE_DELAY_S)
        self._flushing = False
        if not self.up:
            self._queue = []
            return
        try:
            await self._run(None)
        except (TimeoutError, RedisError, OSError) as exc:
            self._down(exc)

    async def _load_scripts(self) -> None:
        await self._client.script_load(ADMIT_LUA)
        await self._client.script_load(SETTLE_LUA)

    async def _run(self, admission: tuple[list[str], list[Any]] | None) -> Any:
        """Send the queued settles, then the admission script if given, in one
        pipeline (one round trip: a worker's settles reach Redis before its
        next admission); the script's answer, None without one."""
        batch, self._queue = self._queue, []
        spend = list(self._take_spend().items())
        if not batch and not spend:
            if admission is None:
                return None
            keys, args = admission
            try:
                return await self._client.evalsha(self._script.sha, len(keys), *keys, *args)
            except NoScriptError:  # Redis restarted: it lost the scripts
                await self._load_scripts()
                return await self._client.evalsha(self._script.sha, len(keys), *keys, *args)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, second, delta in batch:
                    pipe.hincrby(key, str(second), delta)
                for _key_id, deltas in spend:
                    names = list(deltas)
                    values = (repr(deltas[n]) for n in names)
                    pipe.evalsha(self._settle_script.sha, len(names), *names, self.node, *values)
                if admission is not None:
                    keys, args = admission
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            # the spend goes again (a batch Redis took before it failed counts
            # twice: refusing early is the safe side of a budget)
            for key_id, deltas in spend:
                self.settle_spend(key_id, deltas)
            raise
        answer = results[-1] if admission is not None else None
        settled = results[len(batch) : len(batch) + len(spend)]
        unknown = [item for item, res in zip(spend, settled, strict=True) if _no_script(res)]
        if unknown or _no_script(answer):  # Redis restarted: it lost the scripts
            await self._load_scripts()
            for key_id, deltas in unknown:
                self.settle_spend(key_id, deltas)
            if admission is not None and _no_script(answer):
                keys, args = admission
                answer = await self._client.evalsha(self._script.sha, len(keys), *keys, *args)
        for res in (*settled, answer):
            if isinstance(res, Exception) and not _no_script(res):
                raise res
        return answer

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._client.aclose()


def _no_script(result: object) -> bool:
    return isinstance(result, NoScriptError)


def _ttl(spend_key: str) -> int:
    """Seconds a period's spend hash is kept: until a day after its period ends
    (a request that began in it may settle a little later); `total` is kept."""
    name = spend_key.rsplit(":", 1)[1]
    if name == "total":
        return 0
    end = period_end("daily" if name[0] == "d" else "monthly", time.time())
    return int((end or 0.0) - time.time()) + 86400
