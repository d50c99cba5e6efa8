"""An opt-in probe of a worker's event-loop lag, for benchmarks and diagnosis.

Off unless `PROMETHEUS_LOOP_LAG_PROBE=1` is in the environment, and off it
costs nothing at all (no task, no route). `proxy.server.app.build_app` calls
`install(app)` on each worker's app. When on, a task sleeps `INTERVAL_S` again
and again and records by how much each wake-up came late: anything that holds
the loop (a blocking call, a thread holding the GIL) shows up as lag. Lags are
kept in a histogram of `BUCKET_MS` buckets (bounded memory however long it
runs) plus the exact maximum, and `GET /debug/loop-lag` answers this worker's
figures as JSON (`?reset=1` starts a new window after reading); with
`--workers N` each request reaches one worker, named by `pid`. The bench
(`bench/compare.py`) reads it around each load run.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from aiohttp import web

ENV = "PROMETHEUS_LOOP_LAG_PROBE"
PATH = "/debug/loop-lag"
INTERVAL_S = 0.001
BUCKET_MS = 0.1


class LagStats:
    """Lags in milliseconds: a histogram of `BUCKET_MS` buckets and the maximum."""

    __slots__ = ("counts", "samples", "max_ms", "since")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.samples = 0
        self.max_ms = 0.0
        self.since = time.time()

    def reset(self) -> None:
        self.counts = {}
        self.samples = 0
        self.max_ms = 0.0
        self.since = time.time()

    def add(self, lag_ms: float) -> None:
        bucket = int(lag_ms / BUCKET_MS)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.samples += 1
        if lag_ms > self.max_ms:
            self.max_ms = lag_ms

    def percentile(self, p: float) -> float | None:
        """Upper edge of the bucket holding the nearest-rank `p` percentile."""
        if not self.samples:
            return None
        rank = max(1, math.ceil(p / 100.0 * self.samples))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return round(min((bucket + 1) * BUCKET_MS, self.max_ms), 3)
        return round(self.max_ms, 3)

    def summary(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "interval_ms": INTERVAL_S * 1000.0,
            "samples": self.samples,
            "window_s": round(time.time() - self.since, 3),
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "max_ms": round(self.max_ms, 3),
        }


STATS: web.AppKey[LagStats] = web.AppKey("loop_lag_stats", LagStats)


async def _probe(stats: LagStats) -> None:
    clock = time.perf_counter
    while True:
        before = clock()
        await asyncio.sleep(INTERVAL_S)
        stats.add(max(0.0, (clock() - before - INTERVAL_S) * 1000.0))


async def _report(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    body = stats.summary()
    if request.query.get("reset") == "1":
        stats.reset()
    return web.json_response(body)


def install(app: web.Application) -> None:
    """Add the probe and its route to a worker's app, if the environment asks for it."""
    if os.environ.get(ENV) != "1":
        return
    tasks: list[asyncio.Task[None]] = []
    stats = app[STATS] = LagStats()

    async def start(app: web.Application) -> None:
        stats.reset()
        tasks.append(asyncio.create_task(_probe(stats)))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()

    app.router.add_get(PATH, _report)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
