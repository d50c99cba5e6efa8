"""Usage records that SQLite refuses, set aside so they block nothing.

`proxy.usage.writer` (a live batch) and `proxy.usage.replay` (a journal
segment) call `set_aside` for each row that cannot be written, once the rows
around it are committed. The record is appended, with the reason, to
`rejected-YYYY-MM-DD.jsonl` in the journal directory (one file per UTC day,
shared by all processes through O_APPEND) and logged once with its request
id. Replay never reads these files: an operator can fix a line and load it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.observability.logs import get_logger

REJECTED_PREFIX = "rejected-"


def encode_line(value: Any) -> bytes:
    """One JSON line; stdlib json where orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(value) + b"\n"
    except TypeError:
        return json.dumps(value, default=repr).encode() + b"\n"


def rejected_path(journal_dir: Path) -> Path:
    return journal_dir / f"{REJECTED_PREFIX}{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"


def set_aside(journal_dir: Path, record: Any, reason: str) -> None:
    """Keep `record` out of SQLite for good: on disk with its reason, and in the log."""
    path = rejected_path(journal_dir)
    request_id = record.get("request_id") if isinstance(record, dict) else None
    if not isinstance(request_id, str | None):
        request_id = repr(request_id)  # whatever it is, the log line must serialise
    entry = {"rejected_at": time.time(), "reason": reason, "record": record}
    log = get_logger()
    try:
        line = encode_line(entry)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except (OSError, ValueError, TypeError) as exc:
        # the disk refuses it too: the log line is then the only copy
        log.error(
            "usage_record_set_aside",
            request_id=request_id,
            reason=reason,
            record=repr(record),
            file_error=str(exc),
        )
        return
    log.warning("usage_record_set_aside", request_id=request_id, reason=reason, file=str(path))
