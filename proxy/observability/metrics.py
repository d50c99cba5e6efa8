"""`GET /metrics`: the gateway's Prometheus series, right across `--workers N`.

`prepare` runs in the serving process before any worker forks: it points
prometheus-client's multiprocess mode at an emptied `metrics` folder beside
the usage journal, so each worker's counters live in its own mmapped file and
a scrape (any worker) adds them up. A process that never called `prepare`
(tests that build the app in-process) keeps plain in-memory series.

The meter calls `observe(record)` once per usage record
(`proxy.metering.meter`); that only adds the record's numbers to this
worker's pending sums (a few dict and list updates). Every `FOLD_S` after
the first pending record, and before a scrape or exit, the sums are folded
into the series: one mmap write per series touched, not six per request
(each `inc` re-checks the pid and takes a lock). So a scrape may miss at most
the last `FOLD_S` of another worker's requests; usage itself is never later
than that (`proxy.usage.writer` flushes every 0.25 s).

Labels are bounded: alias and deployment come from the config, status and
error codes from a small set (codes past `MAX_ERROR_CODES` are `other`), and
no key id unless `[metrics] per_key = true`. The limits code calls
`limit_rejected(kind)` when it refuses a request. Breaker state is the
answering worker's view, as `/admin/health` shows it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
from bisect import bisect_left
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proxy.server.state import STATE

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_ERROR_CODES = 64
PREFIX = "prometheus_gateway"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30)
BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
FOLD_S = 0.1  # pending sums are folded into the series this long after the first

_per_key = False


def prepare(directory: Path, per_key: bool = False) -> None:
    """Multiprocess mode, files in `directory` (emptied: counters start at zero
    with the gateway). Call before the workers fork and before any series is used."""
    global _per_key
    _per_key = per_key
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _Series:
    """The gateway's metric families, made on first use (after `prepare`)."""

    def __init__(self, per_key: bool) -> None:
        key = ["key_id"] if per_key else []
        self.per_key = per_key
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests metered", ["alias", "deployment", "status", *key]
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens", "Tokens billed", ["alias", "deployment", "kind", *key]
        )
        self.spend = Counter(f"{PREFIX}_spend_usd", "Spend in USD", ["alias", "deployment", *key])
        self.errors = Counter(
            f"{PREFIX}_errors", "Requests that ended in an error", ["alias", "code"]
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "Whole-request latency",
            ["alias", "deployment"],
            buckets=LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            f"{PREFIX}_ttft_seconds",
            "Time to first token of streams",
            ["alias", "deployment"],
            buckets=TTFT_BUCKETS,
        )
        self.breaker = Gauge(
            f"{PREFIX}_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 half open, 2 open",
            ["alias", "deployment"],
            multiprocess_mode="mostrecent",
        )
        self.limit_rejections = Counter(
            f"{PREFIX}_limit_rejections", "Requests refused by a key limit", ["kind"]
        )
        self.children: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.codes: set[str] = set()

    def of(self, alias: str, deployment: str, status: int, key_id: str) -> tuple[Any, ...]:
        key = (alias, deployment, status, key_id)
        found = self.children.get(key)
        if found is None:
            extra = [key_id] if self.per_key else []
            found = self.children[key] = (
                self.requests.labels(alias, deployment, str(status), *extra),
                self.tokens.labels(alias, deployment, "input", *extra),
                self.tokens.labels(alias, deployment, "output", *extra),
                self.spend.labels(alias, deployment, *extra),
                self.latency.labels(alias, deployment),
                self.ttft.labels(alias, deployment),
            )
        return found

    def code(self, code: str) -> str:
        if code in self.codes:
            return code
        if len(self.codes) >= MAX_ERROR_CODES:
            return "other"
        code = code[:64]
        self.codes.add(code)
        return code


_series: _Series | None = None


def _get() -> _Series:
    global _series
    if _series is None:
        _series = _Series(_per_key)
    return _series


class _Pending:
    """One series group's sums since the last fold."""

    __slots__ = ("requests", "tokens_in", "tokens_out", "spend", "latency", "ttft")

    def __init__(self) -> None:
        self.requests = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.spend = 0.0
        self.latency: list[float] = []
        self.ttft: list[float] = []


_pending: dict[tuple[str, str, int, str], _Pending] = {}
_pending_errors: dict[tuple[str, str], int] = {}
_fold_due = False


def observe(record: dict[str, Any]) -> None:
    """Count one usage record (the meter calls it as it writes the record)."""
    global _fold_due
    s = _series or _get()
    key = (
        record["model"],
        record["deployment"],
        record["status"],
        record["key_id"] if s.per_key else "",
    )
    sums = _pending.get(key)
    if sums is None:
        sums = _pending[key] = _Pending()
    sums.requests += 1
    sums.tokens_in += record["input_tokens"]
    sums.tokens_out += record["output_tokens"]
    sums.spend += record["cost_usd"]
    sums.latency.append(record["latency_ms"] / 1000.0)
    if record["ttft_ms"] is not None:
        sums.ttft.append(record["ttft_ms"] / 1000.0)
    if record["error"] is not None:
        code = (record["model"], s.code(str(record["error"])))
        _pending_errors[code] = _pending_errors.get(code, 0) + 1
    if not _fold_due:
        _fold_due = True
        try:
            asyncio.get_running_loop().call_later(FOLD_S, fold)
        except RuntimeError:  # no loop (a tool or a test outside one): at once
            fold()


def _observe_all(histogram: Any, values: list[float]) -> None:
    """A histogram child's observations in one write per bucket touched."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus-client
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        i = bisect_left(bounds, value)
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)
    total.inc(sum(values))


def fold() -> None:
    """Add the pending sums to the series (the scrape's view)."""
    global _fold_due
    _fold_due = False
    if not _pending and not _pending_errors:
        return
    s = _get()
    pending = dict(_pending)
    errors = dict(_pending_errors)
    _pending.clear()
    _pending_errors.clear()
    for (alias, deployment, status, key_id), sums in pending.items():
        requests, tin, tout, spend, latency, ttft = s.of(alias, deployment, status, key_id)
        requests.inc(sums.requests)
        if sums.tokens_in:
            tin.inc(sums.tokens_in)
        if sums.tokens_out:
            tout.inc(sums.tokens_out)
        if sums.spend:
            spend.inc(sums.spend)
        _observe_all(latency, sums.latency)
        if sums.ttft:
            _observe_all(ttft, sums.ttft)
    for (alias, code), n in errors.items():
        s.errors.labels(alias, code).inc(n)


atexit.register(fold)


def limit_rejected(kind: str) -> None:
    """A request refused by a key's limit (`kind`: rpm, tpm, budget, ...)."""
    _get().limit_rejections.labels(kind).inc()


def _exposition() -> bytes:
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


async def endpoint(request: web.Request) -> web.Response:
    """GET /metrics, without a key (see README: expose it to your scraper only)."""
    state = request.app[STATE]
    fold()  # this worker's own latest requests
    s = _get()
    for row in state.health.snapshot(state.routes):
        s.breaker.labels(row["alias"], row["deployment"]).set(BREAKER_VALUES.get(row["state"], 0))
    body = await asyncio.to_thread(_exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
