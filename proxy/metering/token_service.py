"""One tokenizer per machine: the counting process, and the workers' way to it.

Where it sits: `proxy.server.lifecycle.serve` calls `start(config)` once, before any
worker runs (forked or in-process); it starts `proxy.metering.token_server`, a
small process of its own that loads the encodings the config names in the
background, and stops it when the serving process exits, that is after the
workers have drained. `proxy.metering.tokens.count_locally` and
`count_embedding_locally` ask it first (`ask`) and count in-process on a
thread (as before) only when it does not answer.

Why a process: building a tiktoken encoding holds the GIL for 0.1-0.4 s at a
stretch (measured: `bench/compare.py --first-count-only`). On a worker's
thread that stops the worker's event loop, and every request in flight waits
(the latency tail after the first cut stream). In the counting process it
stops nobody, and an encoding's ~50 MiB (o200k_base) exist once per gateway
instead of once per worker.

Transport: a unix socket in a private temp dir (0700); no network at all. This
process binds and listens before the counting process starts and hands it the
listening socket, so a worker can connect from its first moment (connections
wait in the backlog until the process accepts). One connection per count; a
frame is a 4-byte big-endian length and an orjson object.

Robustness: a count the process does not answer (gone, refused, slower than
`TIMEOUT_S`, a broken answer) is counted in-process and logged, so no usage
record is lost; after such a failure a worker skips the process for
`RETRY_AFTER_S` (one log line per failure, not one per count). The process
watches its stdin, a pipe whose write end only this process and its forked
workers hold: when the last of them is gone, even by SIGKILL, it exits (and
removes its socket dir; a dir left by a SIGKILL to both is swept by the next
gateway's `start`).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.config.model import GatewayConfig
from proxy.observability.logs import get_logger

TIMEOUT_S = 5.0
"""Longest wait for one count (the first count of an encoding includes its ~0.2-1 s load)."""
RETRY_AFTER_S = 5.0
STOP_WAIT_S = 5.0
SERVER_MODULE = "proxy.metering.token_server"
MAX_FRAME = 1 << 30
DIR_PREFIX = "prometheus-tokens-"
STALE_AFTER_S = 60.0

_socket_path: str | None = None  # set by start(); forked workers inherit it
_down_until = 0.0  # monotonic time before which this worker does not ask


class _Service:
    """The counting process as the serving process that started it sees it."""

    def __init__(self, proc: subprocess.Popen[bytes], sock_dir: Path) -> None:
        self.proc = proc
        self.sock_dir = sock_dir
        self.owner = os.getpid()

    def stop(self) -> None:
        if os.getpid() != self.owner:  # a forked child leaving: not its to stop
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # EOF: the process exits (the workers are gone)
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


_service: _Service | None = None


def start(config: GatewayConfig) -> int | None:
    """Start the machine's counting process (once); its PID, or None if it could not
    start (then every worker counts in-process, as before). It is stopped at exit.

    It loads the encodings the config's deployments name at once, in the background:
    that costs ~0.2-0.5 s of CPU while the gateway starts instead of in the middle of
    the first burst of cut streams (and the first count does not wait for it)."""
    global _socket_path, _service
    if _service is not None:
        return _service.proc.pid
    log = get_logger()
    encodings = sorted({d.encoding for r in config.routes.values() for d in r.deployments})
    _sweep_stale_dirs()
    try:
        sock_dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))  # mode 0700
    except OSError as exc:
        log.warning("token_service_not_started", error=str(exc), counting="in-process")
        return None
    path = sock_dir / "count.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(512)
        proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--fd", str(listener.fileno())]
            + ["--preload", ",".join(encodings)],
            stdin=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
        )
    except OSError as exc:  # a socket path too long, no processes left...
        log.warning("token_service_not_started", error=str(exc), counting="in-process")
        shutil.rmtree(sock_dir, ignore_errors=True)
        return None
    finally:
        listener.close()  # the counting process holds it now; the workers must not
    _service = _Service(proc, sock_dir)
    _socket_path = str(path)
    atexit.register(stop)
    log.info("token_service_started", pid=proc.pid, socket=_socket_path)
    return proc.pid


def _sweep_stale_dirs() -> None:
    """Remove the socket dirs of counting processes that died with their gateway
    (SIGKILL to both leaves the dir behind): ours, older than `STALE_AFTER_S`,
    whose socket nobody listens on."""
    for sock_dir in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        try:
            st = sock_dir.stat()
            if st.st_uid != os.getuid() or time.time() - st.st_mtime < STALE_AFTER_S:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                probe.connect(str(sock_dir / "count.sock"))
        except (ConnectionRefusedError, FileNotFoundError):
            shutil.rmtree(sock_dir, ignore_errors=True)
        except OSError:
            continue  # alive, busy, or not ours to judge


def stop() -> None:
    """Stop the counting process started by this process (also run at exit)."""
    global _service, _socket_path
    if _service is not None:
        _service.stop()
        if _service.owner == os.getpid():
            _service = None
            _socket_path = None


async def ask(op: str, **payload: Any) -> Any:
    """The counting process's answer to one count, or None when it gave none (the
    caller then counts in-process). `op` is "chat" (body, text, encoding) or
    "embedding" (input, encoding)."""
    global _down_until
    path = _socket_path
    if path is None or time.monotonic() < _down_until:
        return None
    payload["op"] = op
    try:
        data = orjson.dumps(payload)
    except TypeError as exc:  # e.g. an integer orjson cannot write: count it here
        _fallback(f"request not serialisable: {exc}")
        return None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            answer = await _exchange(path, data)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        _down_until = time.monotonic() + RETRY_AFTER_S
        get_logger().warning(
            "token_service_unavailable",
            reason=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            worker_pid=os.getpid(),
            counting="in-process",
            retry_after_s=RETRY_AFTER_S,
        )
        return None
    result = answer.get("ok") if isinstance(answer, dict) else None
    if result is None or not _well_formed(op, result):
        error = answer.get("error") if isinstance(answer, dict) else None
        _fallback(str(error or f"unexpected answer {answer!r:.200}"))
        return None
    return result


def _fallback(reason: str) -> None:
    get_logger().warning(
        "token_count_fallback", reason=reason, worker_pid=os.getpid(), counting="in-process"
    )


async def _exchange(path: str, data: bytes) -> Any:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(len(data).to_bytes(4, "big"))
        writer.write(data)
        size = int.from_bytes(await reader.readexactly(4), "big")
        if size > MAX_FRAME:
            raise ValueError(f"answer of {size} bytes")
        return orjson.loads(await reader.readexactly(size))
    finally:
        writer.close()


def _well_formed(op: str, result: Any) -> bool:
    if op == "chat":
        return (
            isinstance(result, list)
            and len(result) == 2
            and all(type(n) is int and n >= 0 for n in result)
        )
    return type(result) is int and result >= 0
