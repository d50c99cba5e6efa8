"""Structured logs (structlog, JSON lines on stdout).

`configure_logging` runs once at start. The middleware in `proxy.http.middleware` writes
one `request` line per request: request id, key id (never the key), alias,
status, tokens, latency and TTFT.

Lines go out through `LoopBatchedBytesLogger`: inside a running event loop a
line is appended to a buffer and every line of one loop iteration leaves in
one `write` + `flush` at the start of the next iteration (a busy worker
finishes dozens of requests per iteration; one syscall per request was a
measurable part of the per-request CPU). Outside a loop, or from another
thread, a line is written at once. The buffer is also flushed at exit. A
process killed with SIGKILL can lose the lines of its last loop iteration;
the usage journal, not the log, is what billing relies on.

The per-request line skips structlog's processor chain: `request_line`
renders it with one `orjson.dumps` (the same keys, order and timestamp
format as the chain gives) straight into that buffer; before
`configure_logging` ran (tests that build the app in-process) it goes
through structlog like any other line.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog

_get_running_loop = asyncio._get_running_loop  # the C accessor, no exception when absent


class LoopBatchedBytesLogger:
    """A structlog logger writing bytes lines, batched per event-loop iteration."""

    __slots__ = ("_file", "_buf", "_loop", "_lock", "name")

    def __init__(self, file: BinaryIO | None = None, name: str | None = None) -> None:
        self._file = file if file is not None else sys.stdout.buffer
        self._buf: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        self._lock = threading.Lock()
        self.name = name
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        loop = _get_running_loop()
        if loop is None:
            with self._lock:
                self._write([message])
            return
        with self._lock:
            self._buf.append(message)
            if self._loop is loop:  # a flush is already due on this loop
                return
            self._loop = loop
        loop.call_soon(self.flush)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def flush(self) -> None:
        with self._lock:
            self._loop = None
            lines, self._buf = self._buf, []
            if lines:
                self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        try:
            self._file.write(b"\n".join(lines) + b"\n")
            self._file.flush()
        except (OSError, ValueError):  # stdout closed or gone: logs must never break a request
            pass


class _LoggerFactory:
    def __init__(self, file: BinaryIO) -> None:
        self._logger = LoopBatchedBytesLogger(file)

    def __call__(self, *args: Any) -> LoopBatchedBytesLogger:
        return self._logger


_request_sink: LoopBatchedBytesLogger | None = None  # set by configure_logging
_request_lines_on = True


def request_line(fields: dict[str, Any]) -> None:
    """The `request` line of one request: `fields`, then event, level, timestamp."""
    sink = _request_sink
    if sink is None:
        get_logger().info("request", **fields)
        return
    if _request_lines_on:
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = datetime.now(UTC)
        sink.msg(orjson.dumps(fields, option=orjson.OPT_UTC_Z))


def configure_logging(level: int = logging.INFO) -> None:
    global _request_sink, _request_lines_on
    factory = _LoggerFactory(sys.stdout.buffer)
    _request_sink = factory._logger
    _request_lines_on = level <= logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "prometheus") -> Any:
    return structlog.get_logger(name)
