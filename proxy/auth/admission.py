"""Admitting a request against its key's limits and budget, and settling it after.

Handlers call `await admit(request, route, estimate)` right after
`proxy.routing.router.resolve_route` (chat, embeddings, transcriptions): it
refuses with 429 `rate_limit_exceeded` (over `rpm` or `tpm`) or 429
`insufficient_quota` (budget spent), or leaves a `Reservation` on the request.
The `Meter` (`proxy.metering.meter`) calls `settle` when it writes the
request's record, with the tokens and cost the record bills; the middleware
calls `release` for one nothing settled (a request that failed before its
meter began), so a reservation never outlives its request.

The checks take the machine's shared table (`proxy.auth.limits`: no I/O) once:
budget and window together. With `[cluster] redis_url` a key with limits or a
budget then makes one round trip to Redis (`proxy.auth.redis_limits`), which
holds the window and the spend of every machine.

A key with neither limits nor budget costs nothing here: no estimate, no
table, no reservation. Its spend (in case it is given a budget later) is
gathered per worker and added to the table in one locked batch every
`SPEND_FLUSH_S`, so a budget given later counts it, bar what other workers
spent in the last `SPEND_FLUSH_S` before they noticed the budget (which they
do within the same 0.2 s that the key table takes to reach them). A key with
only `rpm` is not estimated either, and its settle takes no lock.

`ratelimit_headers` gives the `x-ratelimit-*` headers of a limited key's reply
(OpenAI's names and formats, resets rounded up to 10 ms from a cache of
strings), which `proxy.server.app` puts on every response of such a key, over
the upstream's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from proxy.auth import refusals
from proxy.auth.estimate import Estimate
from proxy.auth.key_params import PERIODS
from proxy.auth.keys import KeyInfo
from proxy.auth.limits import LocalLimits, TableFull
from proxy.auth.periods import period_end
from proxy.auth.windows import WINDOW_S, Window
from proxy.config.model import AliasRoute

if TYPE_CHECKING:  # redis-py is imported only where [cluster] redis_url is set
    from proxy.auth.redis_limits import RedisLimits, RemoteWindow

RESERVATION = "reservation"  # request key: the request's `Reservation`
HEADERS = "ratelimit_headers"  # request key: its x-ratelimit-* headers
EstimateFn = Callable[[], Awaitable[Estimate] | Estimate]
SPEND_FLUSH_S = 0.2  # how often a worker adds the spend of keys without a budget
_NO_ESTIMATE = Estimate()


class Reservation:
    """One admitted request's hold on its key's window and budget, settled once."""

    __slots__ = (
        "_limits",
        "key",
        "second",
        "tokens",
        "cost",
        "at",
        "seed",
        "done",
        "remote_second",
        "remote_spend",
    )

    def __init__(
        self, limits: Limits, key: KeyInfo, second: int, tokens: int, cost: float, at: float
    ) -> None:
        self._limits = limits
        self.key = key
        self.second = second
        self.tokens = tokens  # reserved in the window (keys with a tpm)
        self.cost = cost  # reserved against the budget (keys with a budget)
        self.at = at
        self.seed = 0.0  # the machine's spend in the budget's period, when admitted
        self.done = False
        self.remote_second: int | None = None  # its bucket in Redis (Redis's clock)
        self.remote_spend: str | None = None  # the Redis spend hash its cost was reserved in

    def settle(self, tokens: int, cost: float) -> None:
        """Replace the estimate with what the request's record billed."""
        if not self.done:
            self.done = True
            self._limits.settle(self, tokens, cost)

    def release(self) -> None:
        """Give everything back (no record was written: nothing was billed)."""
        self.settle(0, 0.0)


class Limits:
    """A process's view of the limits: the machine's table, Redis if configured,
    the cost this worker's own requests in flight are expected to add, and the
    spend of keys without a budget not yet added to the table."""

    def __init__(
        self, local: LocalLimits, remote: RedisLimits | None, log: FilteringBoundLogger
    ) -> None:
        self.local = local
        self.remote = remote
        self._log = log
        self._in_flight: dict[str, float] = {}
        self._full_logged = False
        self._pending: dict[str, float] = {}  # key id -> spend not yet in the table
        self._pending_day = -1
        self._flush_timer: asyncio.TimerHandle | None = None
        if remote is not None:  # this machine: its host and its table (its SQLite file)
            where = hashlib.blake2b(str(local.path.resolve()).encode(), digest_size=6).hexdigest()
            remote.node = f"{socket.gethostname()}:{where}"

    def mode(self) -> dict[str, object]:
        if self.remote is None:
            return {"mode": "local", "redis": None, "table": str(self.local.path)}
        return {**self.remote.mode(), "table": str(self.local.path)}

    def admit(
        self, request: web.Request, key: KeyInfo, route: AliasRoute, est: Estimate
    ) -> Reservation | None:
        """Check the key's budget and window in the machine's table (429 if not),
        and leave a `Reservation` on the request; None if the table is full."""
        now = time.time()
        budget = key.budget_usd
        cost = in_flight = 0.0
        period = None
        if budget is not None:
            period = key.budget_period
            cost = route.price.cost(est.input_tokens, est.output_tokens, est.audio_seconds)
            in_flight = self._in_flight.get(key.id, 0.0)
            if key.id in self._pending:
                self.flush_spend()  # what it spent before it had a budget
        tokens = est.tokens if key.tpm is not None else 0
        try:
            win = self.local.admit(key.id, now, key.rpm, key.tpm, tokens, period, budget, in_flight)
        except TableFull:
            if not self._full_logged:
                self._full_logged = True
                self._log.warning("limits_table_full", key_id=key.id)
            return None
        if not win.admitted:
            if win.refused_by == "budget":
                raise _quota_exhausted(key, now)
            raise _over_limit(key, win)
        if key.rpm is not None or key.tpm is not None:
            request[HEADERS] = ratelimit_headers(key, win)
        if cost:
            self._in_flight[key.id] = in_flight + cost
        reservation = Reservation(self, key, win.second, tokens, cost, now)
        reservation.seed = win.spent
        request[RESERVATION] = reservation
        return reservation

    async def check_remote(self, request: web.Request, reservation: Reservation) -> None:
        """The shared window and spend in Redis, after the local table admitted."""
        remote = self.remote
        if remote is None:
            return
        key = reservation.key
        budget = None
        if key.budget_usd is not None:
            spend_key = remote.spend_key(key.id, key.budget_period, reservation.at)
            budget = (key.budget_usd, spend_key, reservation.cost, reservation.seed)
        win = await remote.admit(key.id, key.rpm, key.tpm, reservation.tokens, budget)
        if win is None:
            return  # unreachable: the machine's own limits stand
        if not win.admitted:
            reservation.done = True
            if key.rpm is not None or key.tpm is not None:
                self.local.settle(
                    key.id, reservation.second, reservation.tokens, 0, 0.0, None, requests=-1
                )
            self._drop_in_flight(key.id, reservation.cost)
            del request[RESERVATION]
            if win.refused_by == "budget":
                raise _quota_exhausted(key, reservation.at)
            raise _over_limit(key, win)
        if key.rpm is not None or key.tpm is not None:
            request[HEADERS] = ratelimit_headers(key, win)
        reservation.remote_second = win.second
        if budget is not None:
            reservation.remote_spend = budget[1]

    def settle(self, reservation: Reservation, tokens: int, cost: float) -> None:
        key = reservation.key
        now = time.time()
        if reservation.cost:
            self._drop_in_flight(key.id, reservation.cost)
        has_tpm = key.tpm is not None
        used = tokens if has_tpm else 0
        if has_tpm or key.budget_usd is not None:
            try:
                self.local.settle(key.id, reservation.second, reservation.tokens, used, cost, now)
            except TableFull:
                return
        elif cost:
            self.spend_later(key.id, cost)
        remote = self.remote
        if remote is None:
            return
        if has_tpm and reservation.remote_second is not None:
            remote.settle(key.id, reservation.remote_second, used - reservation.tokens)
        if key.budget_usd is not None:
            deltas = dict.fromkeys((remote.spend_key(key.id, p, now) for p in PERIODS), cost)
            if reservation.remote_spend is not None:
                held = reservation.remote_spend
                deltas[held] = deltas.get(held, 0.0) - reservation.cost
            remote.settle_spend(key.id, {k: d for k, d in deltas.items() if d})

    def spend_later(self, key_id: str, cost: float) -> None:
        """Count a key's spend (a key without a budget) in the next batch."""
        day = int(time.time() // 86400)
        if day != self._pending_day:
            self.flush_spend()
            self._pending_day = day
        self._pending[key_id] = self._pending.get(key_id, 0.0) + cost
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(SPEND_FLUSH_S, self.flush_spend)

    def flush_spend(self) -> None:
        """Add the gathered spend to the machine's table, under one lock."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        # counted in the UTC day it was spent in, even when flushed just after it
        at = min(time.time(), self._pending_day * 86400 + 86399.999)
        self.local.add_spends(pending, at)

    def _drop_in_flight(self, key_id: str, cost: float) -> None:
        if cost:
            left = self._in_flight.get(key_id, 0.0) - cost
            if left > 1e-12:
                self._in_flight[key_id] = left
            else:
                self._in_flight.pop(key_id, None)

    def headers_now(self, key: KeyInfo) -> dict[str, str]:
        """The headers of a limited key's reply that counted nothing (a refusal
        before admission, `/v1/models`, `/v1/usage`)."""
        try:
            return ratelimit_headers(key, self.local.peek(key.id, time.time()))
        except TableFull:
            return {}

    def close(self) -> None:
        self.flush_spend()
        self.local.close()


LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)


async def admit(request: web.Request, route: AliasRoute, estimate: EstimateFn | None) -> None:
    """Admit this request against its key's limits and budget (429 if not), and
    leave its `Reservation` on the request for the meter to settle. `estimate`
    is called only for a key with a `tpm` or a budget."""
    key: KeyInfo = request["key"]
    if _unlimited(key):
        return
    limits = request.app[LIMITS]
    est = _NO_ESTIMATE
    if estimate is not None and (key.tpm is not None or key.budget_usd is not None):
        got = estimate()
        est = got if isinstance(got, Estimate) else await got
    reservation = limits.admit(request, key, route, est)
    if reservation is not None and limits.remote is not None and limits.remote.up:
        await limits.check_remote(request, reservation)


def _unlimited(key: KeyInfo) -> bool:
    """No limit and no budget: `admit` leaves no reservation (and the request dict
    is not asked for one: a missing entry costs an exception in aiohttp's mapping)."""
    return key.rpm is None and key.tpm is None and key.budget_usd is None


def settle(request: web.Request, tokens: int, cost: float) -> None:
    """The request's record is written: settle its reservation with what the
    record bills, or count the spend of a key that had none."""
    key: KeyInfo = request["key"]
    reservation: Reservation | None = None if _unlimited(key) else request.get(RESERVATION)
    if reservation is not None:
        reservation.settle(tokens, cost)
    elif cost:
        request.app[LIMITS].spend_later(key.id, cost)


def release(request: web.Request) -> None:
    """Give back a reservation no record settled (called as the request ends)."""
    key: KeyInfo | None = request.get("key")
    if key is None or _unlimited(key):
        return
    reservation: Reservation | None = request.get(RESERVATION)
    if reservation is not None and not reservation.done:
        reservation.release()


def _quota_exhausted(key: KeyInfo, now: float) -> Exception:
    end = period_end(key.budget_period, now)
    return refusals.quota_exhausted((end or now + 86400) - now, {})


def _over_limit(key: KeyInfo, win: Window | RemoteWindow) -> Exception:
    if win.refused_by == "rpm":
        what = f"requests per minute (RPM): Limit {key.rpm}, Used {win.requests}, Requested 1"
    else:
        what = f"tokens per minute (TPM): Limit {key.tpm}, Used {win.tokens}"
    message = (
        f"Rate limit reached for this API key on {what}. "
        f"Please try again in {duration(win.retry_after_s)}."
    )
    return refusals.rate_limited(message, win.retry_after_s, ratelimit_headers(key, win))


def ratelimit_headers(key: KeyInfo, win: Window | RemoteWindow) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(key.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(key.rpm - win.requests, 0))
        headers["x-ratelimit-reset-requests"] = reset_text(win.reset_requests_s)
    if key.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(key.tpm - win.tokens, 0))
        headers["x-ratelimit-reset-tokens"] = reset_text(win.reset_tokens_s)
    return headers


_RESETS: dict[int, str] = {}  # hundredths of a second -> text; at most 6,001 of them


def reset_text(seconds: float) -> str:
    """`duration` of a reset within the window, rounded up to 10 ms, from a cache."""
    if seconds <= 0:
        return "0s"
    cs = min(int(seconds * 100) + 1, WINDOW_S * 100)
    text = _RESETS.get(cs)
    if text is None:
        if cs < 100:
            text = f"{cs * 10}ms"
        elif cs < 6000:
            text = f"{cs // 100}.{cs % 100:02d}".rstrip("0").rstrip(".") + "s"
        else:
            text = duration(cs / 100)
        _RESETS[cs] = text
    return text


def duration(seconds: float) -> str:
    """OpenAI's format for a reset time: `20ms`, `1.5s`, `6m0s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes = int(seconds // 60)
    return f"{minutes}m{seconds - 60 * minutes:.0f}s"
