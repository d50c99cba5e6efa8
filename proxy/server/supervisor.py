"""`serve --workers N`: N forked workers sharing the port (SO_REUSEPORT).

Called by `proxy.server.lifecycle.serve` with the function each worker runs
(`lifecycle.run_worker`). A worker that dies is replaced (its journal segment
is swept by the others and by the new one); one that cannot listen
(`worker.EXIT_CANNOT_LISTEN`) stops them all, and the supervisor exits with
that code. SIGTERM/SIGINT are forwarded to every worker, each drains its
requests (`[server] drain_s`), and the supervisor exits once all have.

No worker outlives it: the stop signals are blocked while a worker is forked,
so a signal that arrives meanwhile is handled once the new worker is on the
list (in the supervisor), or once the worker's own loop handles it (in the
worker, which inherits the blocked mask); and the signal handler only wakes
the loop below, which does the forwarding.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable

from proxy.config.model import GatewayConfig
from proxy.observability.logs import get_logger
from proxy.server.runner import SETTLE_S
from proxy.server.worker import EXIT_CANNOT_LISTEN, STOP_SIGNALS

WorkerMain = Callable[[GatewayConfig, bool], None]
Process = multiprocessing.process.BaseProcess

RESTART_PAUSE_S = 1.0  # a worker that dies within this of its start is replaced after it
STOP_MARGIN_S = 15.0  # beyond the workers' drain and settling, before they are killed
REAP_S = 5.0  # from a worker's sentinel closing to its exit status, at most


def _worker_entry(run_worker: WorkerMain, config: GatewayConfig, inherited: list[int]) -> None:
    for fd in inherited:  # the supervisor's wake-up pipe is none of the worker's business
        os.close(fd)
    run_worker(config, True)


class Supervisor:
    def __init__(self, config: GatewayConfig, run_worker: WorkerMain) -> None:
        self._config = config
        self._run_worker = run_worker
        self._ctx = multiprocessing.get_context("fork")
        self._log = get_logger()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._started: dict[int | None, float] = {}
        self.workers: list[Process] = []

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:  # the loop has enough wake-ups pending
            pass

    def _spawn(self) -> Process:
        proc = self._ctx.Process(
            target=_worker_entry,
            args=(self._run_worker, self._config, [self._wake_r, self._wake_w]),
            daemon=False,
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc.start()
            self.workers.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._started[proc.pid] = time.monotonic()
        self._log.info("worker_started", pid=proc.pid)
        return proc

    def _sleep(self, seconds: float | None, watch_workers: bool = True) -> list[object]:
        """Wait for a stop signal, a worker's end (if `watch_workers`), or `seconds`;
        the sentinels of the workers that ended."""
        ends = [p.sentinel for p in self.workers] if watch_workers else []
        ready = multiprocessing.connection.wait([self._wake_r, *ends], timeout=seconds)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:  # emptied
            pass
        return list(ready)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        for _ in range(self._config.workers):
            self._spawn()
        code = 0
        while not self._stopping:
            code = self._replace_dead(self._sleep(None))
        return self._stop_all() or code

    def _replace_dead(self, ended: list[object]) -> int:
        for proc in list(self.workers):
            if self._stopping:
                break
            if proc.sentinel in ended:
                # its sentinel closes a moment before it can be reaped: wait for that,
                # or its exit code is not known yet and its end would go unnoticed
                proc.join(REAP_S)
            if proc.exitcode is None:
                continue
            self.workers.remove(proc)
            if proc.exitcode == EXIT_CANNOT_LISTEN:  # it said why in its own log line
                self._stopping = True
                return EXIT_CANNOT_LISTEN
            # its journal segment is swept by the others (and by the new worker)
            self._log.warning("worker_died", pid=proc.pid, exitcode=proc.exitcode)
            if time.monotonic() - self._started.pop(proc.pid, 0.0) < RESTART_PAUSE_S:
                self._sleep(RESTART_PAUSE_S, watch_workers=False)  # dying at start: no spin
            if not self._stopping:
                self._spawn()
        return 0

    def _stop_all(self) -> int:
        """SIGTERM every worker, wait for their drain; kill any that outstays it."""
        for proc in self.workers:
            if proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._config.drain_s + SETTLE_S + STOP_MARGIN_S
        for proc in self.workers:
            proc.join(max(0.0, deadline - time.monotonic()))
        code = 0
        for proc in self.workers:
            if proc.exitcode is None and proc.pid is not None:
                self._log.error("worker_killed", pid=proc.pid, reason="drain overran")
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                code = 1
        os.close(self._wake_r)
        os.close(self._wake_w)
        return code


def supervise(config: GatewayConfig, run_worker: WorkerMain) -> int:
    """Run N forked workers, each `run_worker(config, reuse_port=True)`, replacing any
    that dies, until SIGTERM/SIGINT or a worker that cannot listen; the exit code."""
    return Supervisor(config, run_worker).run()
