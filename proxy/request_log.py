"""Structured logs (structlog, JSON lines on stdout).

`configure_logging` runs once at start. The middleware in `proxy.app` writes
one `request` line per request: request id, key id (never the key), alias,
status, tokens, latency and TTFT.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def configure_logging(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "prometheus") -> Any:
    return structlog.get_logger(name)
