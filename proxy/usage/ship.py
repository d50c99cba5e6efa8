"""The sidecar: `prometheus-gateway ship --config FILE [--once]`.

A process of its own beside the gateway (one per machine). Each round it
reads the usage rows past each sink's watermark (`proxy.usage.ship_queue`),
sends them in batches of `[ship] batch_size`, and moves the watermark only
after the sink confirmed (`proxy.usage.sinks`). A sink that is down makes it
wait and retry (backing off up to `MAX_BACKOFF_S`); the rows wait in SQLite
and the gateway, which only ever appends to it, never notices. Shipped rows
older than `[ship] retain_days` are pruned locally. With a cluster DSN it
also keeps the node's keys in step with PostgreSQL (`proxy.auth.central_keys`).
`--once` ships what is there and exits (1 if a sink failed).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from typing import Any

from proxy.config.model import GatewayConfig
from proxy.observability import ship_metrics
from proxy.observability.logs import get_logger
from proxy.usage.ship_queue import ShipQueue
from proxy.usage.sinks import Sink, SinkError
from proxy.usage.sinks.http import HttpSink
from proxy.usage.sinks.postgres import PostgresSink

MAX_BACKOFF_S = 30.0
PRUNE_INTERVAL_S = 600.0
FINAL_ROUND_S = 10.0


class NoSinkError(ValueError):
    """`ship` needs `[ship] postgres_dsn` or `[ship] http_url`."""


def build_sinks(config: GatewayConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.ship.postgres_dsn:
        sinks.append(PostgresSink(config.ship.postgres_dsn))
    if config.ship.http_url:
        sinks.append(HttpSink(config.ship.http_url))
    return sinks


class Shipper:
    def __init__(self, config: GatewayConfig, sinks: list[Sink]) -> None:
        self._config = config
        self._sinks = sinks
        self._queue = ShipQueue(config.db_path, config.ship.node_id, [s.name for s in sinks])
        self._log = get_logger()

    async def drain(self, sink: Sink) -> int:
        """Ship every row waiting for `sink`; the number sent. Raises SinkError."""
        sent = 0
        size = self._config.ship.batch_size
        await sink.ready()
        await asyncio.to_thread(self._queue.stamp)
        mark = await asyncio.to_thread(self._queue.watermark, sink.name)
        while True:
            rows, last = await asyncio.to_thread(self._queue.read, sink.name, size)
            if last <= mark:
                return sent
            if rows:
                await sink.send(rows)  # raises: the watermark stays, the batch is sent again
                ship_metrics.shipped(sink.name, len(rows))
            await asyncio.to_thread(self._queue.confirm, sink.name, last)
            mark = last
            sent += len(rows)

    async def round(self) -> bool:
        """One pass over every sink; False if one failed (its rows wait)."""
        ok = True
        for sink in self._sinks:
            try:
                sent = await self.drain(sink)
            except SinkError as exc:
                ship_metrics.failed(sink.name)
                self._log.warning("ship_failed", sink=sink.name, error=str(exc))
                ok = False
                continue
            except sqlite3.OperationalError as exc:  # busy or locked: the next round
                self._log.warning("ship_local_busy", sink=sink.name, error=str(exc))
                ok = False
                continue
            if sent:
                self._log.info("shipped", sink=sink.name, rows=sent)
        await self.observe()
        return ok

    async def observe(self) -> None:
        try:
            backlog = await asyncio.to_thread(self._queue.backlog)
        except sqlite3.OperationalError:
            return  # busy: measured next round
        ship_metrics.backlog(backlog.rows, backlog.oldest_ts)

    async def prune(self) -> None:
        try:
            deleted = await asyncio.to_thread(self._queue.prune, self._config.ship.retain_days)
        except sqlite3.OperationalError as exc:
            self._log.warning("usage_prune_failed", error=str(exc))
            return
        if deleted:
            self._log.info("usage_pruned", rows=deleted, retain_days=self._config.ship.retain_days)

    async def close(self) -> None:
        for sink in self._sinks:
            await sink.close()
        self._queue.close()


async def run(config: GatewayConfig, once: bool) -> int:
    sinks = build_sinks(config)
    if not sinks and not config.cluster_dsn:
        raise NoSinkError(
            "nothing to do: set [ship] postgres_dsn or [ship] http_url (or [cluster] postgres_dsn)"
        )
    shipper = Shipper(config, sinks)
    log = get_logger()
    log.info("ship_started", node_id=config.ship.node_id, sinks=[s.name for s in sinks])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    keys_task: asyncio.Task[Any] | None = None
    if config.cluster_dsn:
        from proxy.auth.central_keys import KeySync

        sync = KeySync(config.cluster_dsn, config.db_path)
        keys_task = asyncio.create_task(sync.run_once() if once else sync.run())
    server = await ship_metrics.serve(config.ship.metrics_port) if not once else None
    try:
        if once:
            ok = await shipper.round()
            await shipper.prune()
            if keys_task is not None:
                ok = await keys_task and ok
            return 0 if ok else 1
        backoff = config.ship.interval_s
        next_prune = time.monotonic()
        while not stop.is_set():
            ok = await shipper.round()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_S
                await shipper.prune()
            backoff = config.ship.interval_s if ok else min(backoff * 2, MAX_BACKOFF_S)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
        try:  # stopping: what the gateway flushed as it drained goes out too
            await asyncio.wait_for(shipper.round(), FINAL_ROUND_S)
        except TimeoutError:
            log.warning("ship_stopped_with_rows_waiting", message="shipped at the next start")
        return 0
    finally:
        if keys_task is not None:
            keys_task.cancel()
        if server is not None:
            await server.cleanup()
        await shipper.close()


def ship(config: GatewayConfig, once: bool) -> int:
    import uvloop

    return uvloop.run(run(config, once))
