"""Hedged first token: when the first deployment is slow to its first token,
race the same request on the next one, and keep whichever speaks first.

Called by the chat handler for a stream whose alias has `hedge_ms` and two or
more usable deployments (in place of `failover.call_upstream`). The first
attempt starts at once; if it has produced no content within the hedge delay
(a fixed `hedge_ms`, or `"auto"`: the recent p90 time to first token of that
deployment), the same request starts on the next deployment. The first to
produce content wins; the other is cancelled at once (its connection closed),
and what it produced is handed to `on_loser` to be recorded as the gateway's
own overhead. The pieces the winner yielded while the race ran are replayed to
the client by `HedgedReply`, so nothing is lost or sent twice.

If an attempt fails before producing content, the race goes on with the other;
if both fail, the remaining deployments get ordinary failover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import Any

from proxy.config.model import AliasRoute, Deployment
from proxy.http.errors import GatewayError
from proxy.providers.base import Provider, Reply, UpstreamTimeout, UpstreamUnavailable
from proxy.routing.failover import Operation, call_upstream, moves_on, upstream_failure
from proxy.routing.health import HealthBoard

AUTO_FALLBACK_MS = 800.0  # "auto" before a deployment has enough TTFT samples

LoserSink = Callable[[Deployment, Reply], None]
"""Told of the losing side of a race (closed already), to record it later."""


class _Attempt:
    """One side of the race: the reply, and the pieces read until its first content."""

    def __init__(self, index: int, dep: Deployment) -> None:
        self.index = index
        self.dep = dep
        self.reply: Reply | None = None
        self.head: list[bytes] = []
        self.rest: AsyncIterator[bytes] | None = None
        self.started = perf_counter()

    async def run(self, provider: Provider, operation: Operation) -> _Attempt:
        self.reply = reply = await operation(provider, self.dep)
        if reply.error is not None:
            return self
        pieces = reply.chunks().__aiter__()
        self.rest = pieces
        while reply.first_content_at is None and not reply.ended:
            try:
                self.head.append(await pieces.__anext__())
            except StopAsyncIteration:
                break
        return self


class HedgedReply(Reply):
    """The winning reply, with the pieces read during the race put back in front."""

    def __init__(self, attempt: _Attempt) -> None:
        assert attempt.reply is not None
        self._inner = attempt.reply
        self._head = attempt.head
        self._rest = attempt.rest

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self._head:
            yield piece
        if self._rest is not None:
            async for piece in self._rest:
                yield piece

    def text(self) -> str:
        return self._inner.text()

    def close(self) -> None:
        self._inner.close()

    def __getattribute__(self, name: str) -> Any:
        # the reply's state (usage, first content, ended...) is the winner's, live
        if name in _DELEGATED:
            return getattr(object.__getattribute__(self, "_inner"), name)
        return object.__getattribute__(self, name)


_DELEGATED = frozenset(
    {
        "status",
        "error",
        "retry_after",
        "usage",
        "usage_rejected",
        "first_content_at",
        "client_headers",
        "ended",
        "complete",
    }
)


def hedge_delay_s(route: AliasRoute, board: HealthBoard, index: int) -> float | None:
    setting = route.hedge_ms
    if setting is None:
        return None
    if setting == "auto":
        p90 = board.ttft_p90_ms(route.alias, index)
        return (AUTO_FALLBACK_MS if p90 is None else p90) / 1000.0
    return float(setting) / 1000.0


async def _settle_loser(attempt: _Attempt, task: asyncio.Task[_Attempt], sink: LoserSink) -> None:
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the loser's fate is moot
            pass
    if attempt.reply is not None:
        attempt.reply.close()
        if attempt.reply.error is None:
            sink(attempt.dep, attempt.reply)


async def hedged_call(
    providers: dict[str, Provider],
    route: AliasRoute,
    operation: Operation,
    board: HealthBoard,
    on_loser: LoserSink,
) -> tuple[Reply, Deployment]:
    order = board.order(route)
    delay = hedge_delay_s(route, board, order[0][0]) if len(order) >= 2 else None
    if delay is None:
        return await call_upstream(providers, route, operation, board)
    attempts = [_Attempt(i, dep) for i, dep in order[:2]]
    tasks: dict[asyncio.Task[_Attempt], _Attempt] = {}

    def start(attempt: _Attempt) -> None:
        task = asyncio.create_task(attempt.run(providers[attempt.dep.provider], operation))
        tasks[task] = attempt

    start(attempts[0])
    last: GatewayError | None = None
    try:
        done, waiting = await asyncio.wait(set(tasks), timeout=delay)
        if not done:  # no first token within the delay: race the next deployment
            start(attempts[1])
            waiting = {t for t in tasks if not t.done()}
        while True:
            for task in done:
                attempt = tasks[task]
                err = _failure_of(task)
                breaker = board.breaker(route.alias, attempt.index)
                if err is None:
                    breaker.succeeded()
                    _note_ttft(board, route.alias, attempt)
                    for other_task, other in tasks.items():
                        if other is not attempt:
                            await _settle_loser(other, other_task, on_loser)
                    return HedgedReply(attempt), attempt.dep
                breaker.failed(time.monotonic(), err.code)
                if not moves_on(err.status):
                    raise err
                last = err
                if len(tasks) == 1:  # the first failed before the hedge: the next goes now
                    start(attempts[1])
                    waiting = {t for t in tasks if not t.done()}
            if not waiting:
                break
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        for task, attempt in tasks.items():
            await _settle_loser(attempt, task, _discard)
        raise
    if len(order) > 2:
        raced = {a.index for a in attempts}
        return await call_upstream(providers, route, operation, board, skip=raced)
    assert last is not None
    raise last


def _note_ttft(board: HealthBoard, alias: str, attempt: _Attempt) -> None:
    reply = attempt.reply
    if reply is not None and reply.first_content_at is not None:
        board.record_ttft(alias, attempt.index, reply.first_content_at - attempt.started)


def _failure_of(task: asyncio.Task[_Attempt]) -> GatewayError | None:
    exc = task.exception()
    if isinstance(exc, (UpstreamTimeout, UpstreamUnavailable)):
        return upstream_failure(exc)
    if exc is not None:
        raise exc
    reply = task.result().reply
    return None if reply is None else reply.error


def _discard(_dep: Deployment, _reply: Reply) -> None:
    return None
