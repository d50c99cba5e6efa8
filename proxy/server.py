"""Process lifecycle: start-up checks, journal replay, one or N workers, shutdown.

`serve` (called by the CLI) replays usage journals left by dead processes,
says in one log line where the aliases are served from, then runs the aiohttp
app on uvloop: in this process for one worker, or in N forked workers sharing
the port through SO_REUSEPORT, restarting any worker that dies. SIGTERM/SIGINT
stop the workers gracefully; each flushes its usage journal on the way out.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time

from aiohttp import web

from proxy import storage
from proxy.app import build_app
from proxy.config import GatewayConfig
from proxy.request_log import configure_logging, get_logger
from proxy.usage_journal import replay_journals


def _announce(config: GatewayConfig) -> None:
    log = get_logger()
    for warning in config.warnings:
        log.warning("config", message=warning)
    if config.all_simulated():
        log.info(
            "startup",
            message="no provider credentials and no upstreams configured: all "
            f"{len(config.routes)} aliases are served by the built-in simulator (provider=sim)",
            config=config.source,
        )
    else:
        providers = sorted({d.provider for r in config.routes.values() for d in r.deployments})
        log.info("startup", message="serving aliases", config=config.source, providers=providers,
                 defaults_from=config.upstream_source)


def _replay(config: GatewayConfig) -> None:
    conn = storage.connect(config.db_path)
    try:
        added = replay_journals(config.journal_dir, conn)
    finally:
        conn.close()
    if added:
        get_logger().info("journal_replayed", records=added)


def run_worker(config: GatewayConfig, reuse_port: bool) -> None:
    import uvloop

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    configure_logging()
    web.run_app(
        build_app(config),
        host=config.host,
        port=config.port,
        reuse_port=reuse_port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
        shutdown_timeout=10.0,
        # a client that leaves cancels its handler at once: the upstream request
        # is closed and only what the client actually received is billed
        handler_cancellation=True,
        backlog=4096,
    )


def serve(config: GatewayConfig) -> None:
    configure_logging()
    _announce(config)
    _replay(config)
    log = get_logger()
    log.info("listening", url=f"http://{config.host}:{config.port}/v1", workers=config.workers,
             pid=os.getpid())
    if config.workers <= 1:
        run_worker(config, reuse_port=False)
        return
    supervise(config)


def supervise(config: GatewayConfig) -> None:
    """Run N forked workers; start a new one when one dies, until SIGTERM/SIGINT."""
    ctx = multiprocessing.get_context("fork")
    log = get_logger()
    stopping = False

    def spawn() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=run_worker, args=(config, True), daemon=False)
        proc.start()
        started[proc.pid] = time.monotonic()
        return proc

    started: dict[int | None, float] = {}

    workers = [spawn() for _ in range(config.workers)]

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        multiprocessing.connection.wait([p.sentinel for p in workers], timeout=1.0)
        for i, proc in enumerate(workers):
            if proc.is_alive() or stopping:
                continue
            # its journal segment is swept by the others (and by the new worker)
            log.warning("worker_died", pid=proc.pid, exitcode=proc.exitcode)
            if time.monotonic() - started.pop(proc.pid, 0.0) < 1.0:
                time.sleep(1.0)  # dying at start: don't spin
            workers[i] = spawn()
    for proc in workers:
        proc.join()
    sys.exit(0)
