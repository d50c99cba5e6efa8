"""Loading journal segments of dead processes into SQLite.

Called by `proxy.server.lifecycle` at start and by every worker's
`UsageWriter` every `SWEEP_INTERVAL_S` (so a crashed sibling loses nothing).
A segment whose `flock` can be taken belongs to no live writer. Rows are keyed
by request id (`INSERT OR IGNORE`), so a record already written is not counted
twice.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from proxy.usage.journal import SEGMENT_SUFFIX, read_segment, try_lock
from proxy.usage.rows import INSERT_SQL, row_of

SWEEP_INTERVAL_S = 5.0


def replay_journals(journal_dir: Path, conn: sqlite3.Connection) -> int:
    """Load segments of processes that are gone into SQLite; return rows added."""
    if not journal_dir.is_dir():
        return 0
    added = 0
    for seg in sorted(journal_dir.glob(f"*{SEGMENT_SUFFIX}")):
        try:
            fd = os.open(seg, os.O_RDONLY)
        except FileNotFoundError:
            continue  # flushed and removed by its writer meanwhile
        try:
            if not try_lock(fd):
                continue  # its writer is alive
            rows = [row_of(r) for r in read_segment(seg)]
            with conn:
                before = conn.total_changes
                conn.executemany(INSERT_SQL, rows)
                added += conn.total_changes - before
            seg.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return added


def sweep(journal_dir: Path, db_path: Path) -> int:
    """`replay_journals` on a short-lived connection of its own (run on a thread)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return replay_journals(journal_dir, conn)
    finally:
        conn.close()
