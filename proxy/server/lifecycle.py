"""Process lifecycle: start-up announcement, journal replay, one or N workers, shutdown.

`serve` (called by the CLI) raises the open-files limit, checks that the port
is free (a port in use ends it at once, with a clear message and exit code
`worker.EXIT_CANNOT_LISTEN`), replays usage journals left by dead processes,
says in one log line where the aliases are served from, then serves: in this
process for one worker, or in N forked workers sharing the port through
SO_REUSEPORT (`proxy.server.supervisor`), which replaces any worker that
dies. Each serving process runs `proxy.server.worker.serve_app`: on
SIGTERM/SIGINT it stops accepting, drains the requests in flight
(`[server] drain_s`), writes every usage record to SQLite and exits 0.
"""

from __future__ import annotations

import os
import signal

from proxy import storage
from proxy.config.model import GatewayConfig
from proxy.metering import token_service
from proxy.observability.logs import configure_logging, get_logger
from proxy.server.tuning import OPEN_FILES_NEEDED, raise_open_files_limit
from proxy.server.worker import EXIT_CANNOT_LISTEN, cannot_listen, run_app_loop
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


def _open_files() -> int:
    limit = raise_open_files_limit()
    if limit < OPEN_FILES_NEEDED:
        get_logger().warning(
            "open_files_limit",
            message=f"the open-files limit is {limit}: fewer than 1,000 concurrent streams "
            f"fit (raise the hard limit, `ulimit -Hn`, to {OPEN_FILES_NEEDED} or more)",
        )
    return limit


def run_worker(config: GatewayConfig, reuse_port: bool) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    configure_logging()
    code = run_app_loop(config, reuse_port)
    if code:
        raise SystemExit(code)


def serve(config: GatewayConfig) -> None:
    configure_logging()
    log = get_logger()
    refused = cannot_listen(config.host, config.port)
    if refused is not None:
        log.error("cannot_listen", message=refused, host=config.host, port=config.port)
        raise SystemExit(EXIT_CANNOT_LISTEN)
    open_files = _open_files()
    _announce(config)
    _replay(config)
    log.info(
        "listening",
        url=f"http://{config.host}:{config.port}/v1",
        workers=config.workers,
        pid=os.getpid(),
        open_files=open_files,
        drain_s=config.drain_s,
    )
    token_service.start(config)  # one tokenizer for all workers; stopped at exit, after them
    if config.workers <= 1:
        run_worker(config, reuse_port=False)
        return
    from proxy.server.supervisor import supervise  # multiprocessing: only with workers

    code = supervise(config, run_worker)
    if code:
        raise SystemExit(code)
