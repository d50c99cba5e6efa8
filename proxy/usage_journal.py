"""The per-process usage journal and its batch writer into SQLite.

Handlers call `UsageJournal.append(record)` once per request, before the last
byte of the response goes out. The record is appended at once to this
process's current journal segment (an O_APPEND write to the page cache, which
survives the process being killed) and kept in memory. Every
`FLUSH_INTERVAL_S` a background task rotates to a fresh segment, writes the
batch to SQLite in one transaction (`INSERT OR IGNORE` on the request id) and
then deletes the old segment. At start, `replay_journals` loads every segment
left by a dead process: a killed process loses nothing, and because rows are
keyed by request id, nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

FLUSH_INTERVAL_S = 0.25

COLUMNS = (
    "request_id",
    "ts",
    "key_id",
    "model",
    "deployment",
    "endpoint",
    "status",
    "stream",
    "input_tokens",
    "output_tokens",
    "audio_seconds",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "usage_source",
    "error",
)
INSERT_SQL = (
    f"INSERT OR IGNORE INTO requests ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(c) for c in COLUMNS)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_segment(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a line cut by the kill: its response never completed
    return records


def replay_journals(journal_dir: Path, conn: sqlite3.Connection) -> int:
    """Load segments of processes that are gone into SQLite; return rows added."""
    if not journal_dir.is_dir():
        return 0
    added = 0
    for seg in sorted(journal_dir.glob("*.jsonl")):
        try:
            pid = int(seg.name.split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and _pid_alive(pid):
            continue
        rows = [_row(r) for r in _read_segment(seg)]
        with conn:
            before = conn.total_changes
            conn.executemany(INSERT_SQL, rows)
            added += conn.total_changes - before
        seg.unlink(missing_ok=True)
    return added


class UsageJournal:
    def __init__(self, journal_dir: Path, db: aiosqlite.Connection) -> None:
        self._dir = journal_dir
        self._db = db
        self._pending: list[dict[str, Any]] = []
        self._seq = 0
        self._fd = -1
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._sealed: list[Path] = []
        self._dir.mkdir(parents=True, exist_ok=True)
        self._open_segment()

    def _open_segment(self) -> None:
        self._seq += 1
        self._path = self._dir / f"{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")
        self._pending.append(record)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        os.close(self._fd)
        assert self._path is not None
        self._sealed.append(self._path)
        self._open_segment()
        try:
            await self._db.executemany(INSERT_SQL, [_row(r) for r in batch])
            await self._db.commit()
        except Exception:
            self._pending = batch + self._pending  # try again next round
            raise
        sealed, self._sealed = self._sealed, []
        for path in sealed:
            path.unlink(missing_ok=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - retried from the journal at next start
                continue

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()
        os.close(self._fd)
        if self._path is not None and self._path.stat().st_size == 0:
            self._path.unlink(missing_ok=True)
