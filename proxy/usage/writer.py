"""From a finished request's usage record to a row in SQLite, losing nothing.

The meter (`proxy.metering.meter`) calls `UsageWriter.append(record)` once per
request, before the last byte of the response goes out: the record is
appended at once to this process's journal segment (`proxy.usage.journal`)
and kept in memory. Every `FLUSH_INTERVAL_S` a background task rotates to a
fresh segment, writes the batch to SQLite in one transaction (`INSERT OR
IGNORE` on the request id), then deletes the sealed segment. A failed batch
is retried next round; a process that dies first leaves its segment to
`proxy.usage.replay`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.usage.journal import UsageJournal
from proxy.usage.replay import SWEEP_INTERVAL_S, sweep
from proxy.usage.rows import ROWS_PER_INSERT, insert_sql, row_of

FLUSH_INTERVAL_S = 0.25


class UsageWriter:
    def __init__(self, journal_dir: Path, db: aiosqlite.Connection, db_path: Path) -> None:
        self._journal = UsageJournal(journal_dir)
        self._dir = journal_dir
        self._db = db
        self._db_path = db_path
        self._pending: list[tuple[Any, ...]] = []  # rows journaled, not yet in SQLite
        self._task: asyncio.Task[None] | None = None

    def append(self, record: dict[str, Any]) -> None:
        self._journal.append(record)
        self._pending.append(row_of(record))

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._journal.rotate()
        try:
            for start in range(0, len(batch), ROWS_PER_INSERT):
                chunk = batch[start : start + ROWS_PER_INSERT]
                await self._db.execute(insert_sql(len(chunk)), [v for row in chunk for v in row])
            await self._db.commit()
        except Exception:
            self._pending = batch + self._pending  # try again next round (rows are keyed)
            try:
                await self._db.rollback()
            except Exception:  # noqa: BLE001 - the retry does not depend on it
                pass
            raise
        self._journal.committed()

    async def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                    await asyncio.to_thread(sweep, self._dir, self._db_path)
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
        self._journal.close()
