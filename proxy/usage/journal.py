"""The per-process journal: segment files that make a usage record durable at once.

`proxy.usage.writer.UsageWriter` appends each record here before the last byte
of its response goes out (an O_APPEND write to the page cache, which survives
the process being killed), and rotates to a fresh segment before each batch
goes to SQLite; a sealed segment is deleted once its batch is committed.

Each process holds an exclusive `flock` on the segment it writes; the kernel
drops it when the process dies, however it dies. So a segment whose lock can
be taken was left by a dead process: `proxy.usage.replay` loads those.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

SEGMENT_SUFFIX = ".jsonl"


def try_lock(fd: int) -> bool:
    """Take a segment's lock if its writer is gone (or it is ours to take)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_segment(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a line cut by the kill: its response never completed
    return records


class UsageJournal:
    """This process's current segment, and the sealed ones not yet in SQLite."""

    def __init__(self, journal_dir: Path) -> None:
        self._dir = journal_dir
        self._seq = 0
        self._fd = -1
        self._path: Path | None = None
        self._sealed: list[Path] = []
        self._dir.mkdir(parents=True, exist_ok=True)
        self._open_segment()

    def _open_segment(self) -> None:
        self._seq += 1
        name = f"{os.getpid()}-{time.time_ns()}-{self._seq}"
        # locked under a name replay does not look at, then renamed into view:
        # no sweeper can ever take (and delete) a segment that is still written
        hidden = self._dir / f"{name}.new"
        self._path = self._dir / f"{name}{SEGMENT_SUFFIX}"
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(hidden, self._path)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")

    def rotate(self) -> None:
        """Seal the current segment (its records go to SQLite next) and open a fresh one."""
        os.close(self._fd)
        assert self._path is not None
        self._sealed.append(self._path)
        self._open_segment()

    def committed(self) -> None:
        """Every sealed segment's records are in SQLite: delete the files."""
        sealed, self._sealed = self._sealed, []
        for path in sealed:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._fd)
        if self._path is not None and self._path.stat().st_size == 0:
            self._path.unlink(missing_ok=True)
