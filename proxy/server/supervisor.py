"""`serve --workers N`: N forked workers sharing the port (SO_REUSEPORT).

Called by `proxy.server.lifecycle.serve` with the function each worker runs
(`lifecycle.run_worker`); a worker that dies is replaced (its journal segment is
swept by the others and by the new one). SIGTERM/SIGINT stop every worker
gracefully, then the supervisor exits.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import sys
import time
from collections.abc import Callable

from proxy.config.model import GatewayConfig
from proxy.observability.logs import get_logger

WorkerMain = Callable[[GatewayConfig, bool], None]


def supervise(config: GatewayConfig, run_worker: WorkerMain) -> None:
    """Run N forked workers, each `run_worker(config, reuse_port=True)`; start a new
    one when one dies, until SIGTERM/SIGINT."""
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
