"""`GET /metrics`: the gateway's Prometheus series, right across `--workers N`.

`prepare` runs in the serving process before any worker forks: it points
prometheus-client's multiprocess mode at an emptied `metrics` folder beside
the usage journal, so each worker's counters live in its own mmapped file and
a scrape (any worker) adds them up. An increment is an mmap write, cheap
enough for the meter, which calls `observe(record)` once per usage record
(`proxy.metering.meter`). A process that never called `prepare` (tests that
build the app in-process) keeps plain in-memory series.

Labels are bounded: alias and deployment come from the config, status and
error codes from a small set (codes past `MAX_ERROR_CODES` are `other`), and
no key id unless `[metrics] per_key = true`. The limits code calls
`limit_rejected(kind)` when it refuses a request. Breaker state is the
answering worker's view, as `/admin/health` shows it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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


def observe(record: dict[str, Any]) -> None:
    """Count one usage record (the meter calls it as it writes the record)."""
    s = _series or _get()
    key_id = record["key_id"] if s.per_key else ""
    requests, tin, tout, spend, latency, ttft = s.of(
        record["model"], record["deployment"], record["status"], key_id
    )
    requests.inc()
    if record["input_tokens"]:
        tin.inc(record["input_tokens"])
    if record["output_tokens"]:
        tout.inc(record["output_tokens"])
    if record["cost_usd"]:
        spend.inc(record["cost_usd"])
    latency.observe(record["latency_ms"] / 1000.0)
    if record["ttft_ms"] is not None:
        ttft.observe(record["ttft_ms"] / 1000.0)
    if record["error"] is not None:
        s.errors.labels(record["model"], s.code(str(record["error"]))).inc()


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
    s = _get()
    for row in state.health.snapshot(state.routes):
        s.breaker.labels(row["alias"], row["deployment"]).set(BREAKER_VALUES.get(row["state"], 0))
    body = await asyncio.to_thread(_exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
