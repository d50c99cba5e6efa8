"""Loading journal segments of dead processes into SQLite.

Called by `proxy.server.lifecycle` at start and by every worker's
`UsageWriter` every `SWEEP_INTERVAL_S` (so a crashed sibling loses nothing).
A segment whose `flock` can be taken belongs to no live writer. Rows are keyed
by request id (`ON CONFLICT DO NOTHING`), so a record already written is not counted
twice: only the rows added are rolled up (`proxy.usage.rollups.write_rows`),
in the transaction that adds them.

A segment is loaded in one transaction; if a row in it is one SQLite cannot
hold, it is loaded again row by row, the good rows kept and the bad ones set
aside (`proxy.usage.rejected`). If the database itself fails (busy, locked),
the segment stays for the next sweep. Replay never raises for a segment: a
bad file must not keep the gateway from starting.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from proxy.observability.logs import get_logger
from proxy.usage import rollups
from proxy.usage.journal import parse_lines, segment_paths, try_lock
from proxy.usage.rejected import set_aside
from proxy.usage.rows import is_transient, record_of, row_of, row_problem

SWEEP_INTERVAL_S = 5.0


def _rows(values: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, str]]]:
    """The rows SQLite can hold, and the values it cannot (with why)."""
    rows: list[tuple[Any, ...]] = []
    refused: list[tuple[Any, str]] = []
    for value in values:
        if not isinstance(value, dict):
            refused.append((value, "not a usage record (a JSON object)"))
            continue
        row = row_of(value)
        problem = row_problem(row)
        if problem is None:
            rows.append(row)
        else:
            refused.append((value, problem))
    return rows, refused


def _load(conn: sqlite3.Connection, values: list[Any]) -> tuple[int, list[tuple[Any, str]]]:
    """Insert a segment's records, and roll up those added, in one transaction:
    rows added, records refused."""
    rows, refused = _rows(values)
    try:
        with conn:
            return rollups.write_rows(conn, rows), refused
    except Exception as exc:
        if is_transient(exc):
            raise
    with conn:  # one row is bad: each row on its own, in one transaction
        added = 0
        for row in rows:
            try:
                added += rollups.write_rows(conn, [row])
            except Exception as exc:
                if is_transient(exc):
                    raise
                refused.append((record_of(row), _reason(exc)))
        return added, refused


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _replay_segment(seg: Path, conn: sqlite3.Connection, journal_dir: Path) -> int:
    try:
        fd = os.open(seg, os.O_RDONLY)
    except FileNotFoundError:
        return 0  # flushed and removed by its writer meanwhile
    try:
        if not try_lock(fd):
            return 0  # its writer is alive
        if os.fstat(fd).st_nlink == 0:
            return 0  # replayed and removed by another sweeper while we waited
        # read through our descriptor: a live writer may unlink a sealed segment meanwhile
        with open(fd, "rb", closefd=False) as f:
            values = parse_lines(f.read())
        added, refused = _load(conn, values)
        for value, reason in refused:
            set_aside(journal_dir, value, reason)
        seg.unlink(missing_ok=True)
        return added
    finally:
        os.close(fd)


def replay_journals(journal_dir: Path, conn: sqlite3.Connection) -> int:
    """Load segments of processes that are gone into SQLite; return rows added.

    A segment that cannot be loaded now is logged and left for the next sweep."""
    try:
        segments = segment_paths(journal_dir) if journal_dir.is_dir() else []
    except OSError as exc:
        get_logger().warning("journal_replay_failed", journal=str(journal_dir), error=str(exc))
        return 0
    added = 0
    for seg in segments:
        try:
            added += _replay_segment(seg, conn, journal_dir)
        except Exception as exc:  # noqa: BLE001 - the segment stays; the next sweep retries
            get_logger().warning(
                "journal_replay_failed",
                segment=str(seg),
                error=_reason(exc),
                message="left in place, retried by the next sweep",
            )
    return added


def sweep(journal_dir: Path, db_path: Path) -> int:
    """`replay_journals` on a short-lived connection of its own (run on a thread)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return replay_journals(journal_dir, conn)
    finally:
        conn.close()
