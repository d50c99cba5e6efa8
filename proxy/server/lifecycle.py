"""Process lifecycle: start-up announcement, journal replay, one or N workers, shutdown.

`serve` (called by the CLI) replays usage journals left by dead processes,
says in one log line where the aliases are served from, then runs the aiohttp
app on uvloop: in this process for one worker, or in N forked workers sharing
the port through SO_REUSEPORT (`proxy.server.supervisor`), which restarts
any worker that dies. SIGTERM/SIGINT
stop the workers gracefully; each flushes its usage journal on the way out.
"""

from __future__ import annotations

import os
import signal

from aiohttp import web

from proxy import storage
from proxy.config.model import GatewayConfig
from proxy.metering import token_service
from proxy.observability.logs import configure_logging, get_logger
from proxy.server.app import build_app
from proxy.server.supervisor import supervise
from proxy.usage.replay import replay_journals


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
        log.info(
            "startup",
            message="serving aliases",
            config=config.source,
            providers=providers,
            defaults_from=config.upstream_source,
        )


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
    log.info(
        "listening",
        url=f"http://{config.host}:{config.port}/v1",
        workers=config.workers,
        pid=os.getpid(),
    )
    token_service.start(config)  # one tokenizer for all workers; stopped at exit, after them
    if config.workers <= 1:
        run_worker(config, reuse_port=False)
        return
    supervise(config, run_worker)
