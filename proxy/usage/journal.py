"""The per-process journal: segment files that make a usage record durable at once.

`proxy.usage.writer.UsageWriter` appends each record here before the last byte
of its response goes out (an O_APPEND write to the page cache, which survives
the process being killed), and rotates to a fresh segment before each batch
goes to SQLite; a sealed segment is deleted once its batch is committed.

Each process holds an exclusive `flock` on the segment it writes; the kernel
drops it when the process dies, however it dies. So a segment whose lock can
be taken was left by a dead process: `proxy.usage.replay` loads those.

The journal never takes a record down with it: an append that fails (disk
full) is logged and the writer keeps the record in memory for its batch; a
rotation that cannot open the next segment (out of descriptors, disk full)
keeps writing the current one and tries again next round; a segment with no
record in it is not rotated, so an idle or stuck writer makes no new files.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.observability.logs import get_logger
from proxy.usage.rejected import REJECTED_PREFIX, encode_line

SEGMENT_SUFFIX = ".jsonl"


def try_lock(fd: int) -> bool:
    """Take a segment's lock if its writer is gone (or it is ours to take)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def segment_paths(journal_dir: Path) -> list[Path]:
    """The journal's segments, oldest first (not the files of rejected records)."""
    return sorted(
        p for p in journal_dir.glob(f"*{SEGMENT_SUFFIX}") if not p.name.startswith(REJECTED_PREFIX)
    )


def parse_lines(data: bytes) -> list[Any]:
    """The JSON values of a segment's lines; a line cut by a kill is skipped."""
    records = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            try:  # what orjson refuses but stdlib json wrote (NaN, say)
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by the kill: its response never completed
    return records


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class UsageJournal:
    """This process's current segment, and the sealed ones not yet in SQLite."""

    def __init__(self, journal_dir: Path) -> None:
        self._dir = journal_dir
        self._seq = 0
        self._sealed: list[Path] = []
        self._dirty = False  # bytes written to the current segment since it was opened
        self._torn = False  # the last append may have left part of a line
        self._failed_appends = 0  # in the current run of failures
        self._rotate_failing = False
        self._log = get_logger()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fd, self._path = self._open_segment()

    @property
    def path(self) -> Path:
        """The segment appends go to now."""
        return self._path

    def _open_segment(self) -> tuple[int, Path]:
        self._seq += 1
        name = f"{os.getpid()}-{time.time_ns()}-{self._seq}"
        # locked under a name replay does not look at, then renamed into view:
        # no sweeper can ever take (and delete) a segment that is still written
        hidden = self._dir / f"{name}.new"
        path = self._dir / f"{name}{SEGMENT_SUFFIX}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(hidden, path)
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        return fd, path

    def append(self, record: dict[str, Any]) -> bool:
        """Write the record to the segment; False (and logged) if it is only in memory."""
        try:
            try:
                line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            except TypeError:
                line = encode_line(record)  # integers past 64 bits: stdlib json
            if self._torn:  # end the torn line first so that this one parses
                line = b"\n" + line
            written = os.write(self._fd, line)
            if written < len(line):  # short write (disk filling up): the rest, or OSError
                _write_all(self._fd, line[written:])
        except (OSError, TypeError, ValueError) as exc:
            self._torn = self._dirty = True
            if not self._failed_appends:
                self._log.error(
                    "journal_append_failed",
                    request_id=str(record.get("request_id")),
                    error=str(exc),
                    segment=str(self._path),
                    message="records are kept in memory for SQLite until appends work again",
                )
            self._failed_appends += 1
            return False
        self._torn = False
        self._dirty = True
        if self._failed_appends:
            self._log.info("journal_append_recovered", records_not_journaled=self._failed_appends)
            self._failed_appends = 0
        return True

    def rotate(self) -> None:
        """Seal the current segment (its records go to SQLite next) and open a fresh one.

        Nothing to seal when nothing was written since the last rotation. If
        the fresh segment cannot be opened, the current one stays open and
        unsealed (its records are deleted with it after a later batch: rows
        are keyed, a replay of them counts nothing twice)."""
        if not self._dirty:
            return
        try:
            fd, path = self._open_segment()
        except OSError as exc:
            if not self._rotate_failing:
                self._log.warning(
                    "journal_rotate_failed",
                    error=str(exc),
                    segment=str(self._path),
                    message="appending to the current segment, retrying each batch",
                )
            self._rotate_failing = True
            return
        old_fd = self._fd
        self._sealed.append(self._path)
        self._fd, self._path = fd, path
        self._dirty = self._torn = False
        try:
            os.close(old_fd)
        except OSError:
            pass  # its data is written already; the descriptor is gone either way
        if self._rotate_failing:
            self._log.info("journal_rotate_recovered", segment=str(path))
            self._rotate_failing = False

    def committed(self) -> None:
        """Every sealed segment's records are in SQLite (or set aside): delete the files."""
        sealed, self._sealed = self._sealed, []
        for path in sealed:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._fd)
        if not self._dirty:
            self._path.unlink(missing_ok=True)
