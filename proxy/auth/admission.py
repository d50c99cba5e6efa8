"""Admitting a request against its key's limits and budget, and settling it after.

Handlers call `await admit(request, route, estimate)` right after
`proxy.routing.router.resolve_route` (chat, embeddings, transcriptions): it
refuses with 429 `rate_limit_exceeded` (over `rpm` or `tpm`) or 429
`insufficient_quota` (budget spent), or leaves a `Reservation` on the request.
The `Meter` (`proxy.metering.meter`) settles that reservation when it writes
the request's record, with the tokens and cost the record bills; the
middleware releases one nothing settled (a request that failed before its
meter began), so a reservation never outlives its request.

The checks read the machine's shared table (`proxy.auth.limits`: no I/O), then,
with `[cluster] redis_url`, the shared window in Redis (`proxy.auth.redis_limits`:
one round trip). A key with neither limits nor budget costs one table write
per request, at settle time (its spend, in case it is given a budget later).

`ratelimit_headers` gives the `x-ratelimit-*` headers of a limited key's reply
(OpenAI's names and formats), which `proxy.server.app` puts on every response
of such a key, over the upstream's own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from proxy.auth import refusals
from proxy.auth.budgets import over_budget
from proxy.auth.estimate import Estimate
from proxy.auth.keys import KeyInfo
from proxy.auth.limits import LocalLimits, TableFull, Window, period_end
from proxy.auth.redis_limits import RedisLimits, RemoteWindow
from proxy.config.model import AliasRoute

RESERVATION = "reservation"  # request key: the request's `Reservation`
HEADERS = "ratelimit_headers"  # request key: its x-ratelimit-* headers
EstimateFn = Callable[[], Awaitable[Estimate]]


class Reservation:
    """One admitted request's hold on its key's window and budget, settled once."""

    __slots__ = ("_limits", "key", "second", "tokens", "cost", "windowed", "done", "remote_second")

    def __init__(
        self, limits: Limits, key: KeyInfo, second: int, tokens: int, cost: float, windowed: bool
    ) -> None:
        self._limits = limits
        self.key = key
        self.second = second
        self.tokens = tokens
        self.cost = cost
        self.windowed = windowed
        self.done = False
        self.remote_second: int | None = None  # its bucket in Redis (Redis's clock)

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
    and the cost this worker's own requests in flight are expected to add."""

    def __init__(
        self, local: LocalLimits, remote: RedisLimits | None, log: FilteringBoundLogger
    ) -> None:
        self.local = local
        self.remote = remote
        self._log = log
        self._in_flight: dict[str, float] = {}
        self._full_logged = False

    def mode(self) -> dict[str, object]:
        if self.remote is None:
            return {"mode": "local", "redis": None, "table": str(self.local.path)}
        return {**self.remote.mode(), "table": str(self.local.path)}

    async def admit(
        self, request: web.Request, route: AliasRoute, estimate: EstimateFn | None
    ) -> None:
        key: KeyInfo = request["key"]
        now = time.time()
        budget = key.budget_usd
        est = Estimate()
        if estimate is not None and (key.tpm is not None or budget is not None):
            est = await estimate()
        cost = 0.0
        try:
            if budget is not None:
                cost = route.price.cost(est.input_tokens, est.output_tokens, est.audio_seconds)
                spent = self.local.spend(key.id, key.budget_period, now)
                if over_budget(budget, spent, self._in_flight.get(key.id, 0.0)):
                    end = period_end(key.budget_period, now)
                    raise refusals.quota_exhausted((end or now + 86400) - now, {})
            second = int(now)
            if key.limited:
                second = self._check_window(request, key, now, est.tokens)
        except TableFull:
            if not self._full_logged:
                self._full_logged = True
                self._log.warning("limits_table_full", key_id=key.id)
            return
        if cost:
            self._in_flight[key.id] = self._in_flight.get(key.id, 0.0) + cost
        request[RESERVATION] = Reservation(self, key, second, est.tokens, cost, key.limited)

    def _check_window(self, request: web.Request, key: KeyInfo, now: float, tokens: int) -> int:
        win = self.local.admit(key.id, now, key.rpm, key.tpm, tokens)
        if not win.admitted:
            raise _over_limit(key, win)
        request[HEADERS] = ratelimit_headers(key, win)
        return win.second

    async def check_remote(self, request: web.Request) -> None:
        """The shared window in Redis, after the local one admitted the request."""
        reservation: Reservation | None = request.get(RESERVATION)
        if self.remote is None or reservation is None or not reservation.windowed:
            return
        key = reservation.key
        remote = await self.remote.admit(key.id, key.rpm, key.tpm, reservation.tokens)
        if remote is None:
            return  # unreachable: the machine's own limits stand
        if not remote.admitted:
            reservation.done = True
            self.local.settle(key.id, reservation.second, reservation.tokens, 0, 0.0, None, -1)
            self._drop_in_flight(key.id, reservation.cost)
            del request[RESERVATION]
            raise _over_limit(key, remote)
        request[HEADERS] = ratelimit_headers(key, remote)
        reservation.remote_second = remote.second

    def settle(self, reservation: Reservation, tokens: int, cost: float) -> None:
        key = reservation.key
        self._drop_in_flight(key.id, reservation.cost)
        reserved = reservation.tokens if reservation.windowed else 0
        used = tokens if reservation.windowed else 0
        try:
            self.local.settle(key.id, reservation.second, reserved, used, cost, time.time())
        except TableFull:
            return
        if self.remote is not None and reservation.remote_second is not None:
            self.remote.settle(key.id, reservation.remote_second, used - reserved)

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


LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)


async def admit(request: web.Request, route: AliasRoute, estimate: EstimateFn | None) -> None:
    """Admit this request against its key's limits and budget (429 if not), and
    leave its `Reservation` on the request for the meter to settle. `estimate`
    is called only for a key with a `tpm` or a budget."""
    limits = request.app[LIMITS]
    await limits.admit(request, route, estimate)
    if limits.remote is not None:
        await limits.check_remote(request)


def release(request: web.Request) -> None:
    """Give back a reservation no record settled (called as the request ends)."""
    reservation: Reservation | None = request.get(RESERVATION)
    if reservation is not None and not reservation.done:
        reservation.release()


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
        headers["x-ratelimit-reset-requests"] = duration(win.reset_requests_s)
    if key.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(key.tpm - win.tokens, 0))
        headers["x-ratelimit-reset-tokens"] = duration(win.reset_tokens_s)
    return headers


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
