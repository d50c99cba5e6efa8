"""From a finished request's usage record to a row in SQLite, losing nothing.

The meter (`proxy.metering.meter`) calls `UsageWriter.append(record)` once per
request, before the last byte of the response goes out: the record is
appended at once to this process's journal segment (`proxy.usage.journal`)
and kept in memory (also when the append failed). Every `FLUSH_INTERVAL_S` a
background task rotates to a fresh segment, writes the batch to SQLite in one
transaction (`ON CONFLICT DO NOTHING` on the request id) together with the
rollups of the rows it added (`proxy.usage.rollups`), then deletes the sealed
segment.

A batch that fails because of the database (busy, locked, disk full) is
retried whole next round. A batch that fails because of a row (a value
SQLite cannot hold) is written again row by row: the good rows are
committed, and each row SQLite refuses is set aside (`proxy.usage.rejected`),
so one bad row never holds back the rows behind it. A process that dies
first leaves its segments to `proxy.usage.replay`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.background import stop_task
from proxy.observability.logs import get_logger
from proxy.usage import rollups
from proxy.usage.journal import UsageJournal
from proxy.usage.rejected import set_aside
from proxy.usage.replay import SWEEP_INTERVAL_S, sweep
from proxy.usage.rows import (
    INSERT_SQL,
    ROWS_PER_INSERT,
    is_transient,
    record_of,
    row_of,
    row_problem,
)

FLUSH_INTERVAL_S = 0.25

Row = tuple[Any, ...]


class UsageWriter:
    def __init__(self, journal_dir: Path, db: aiosqlite.Connection, db_path: Path) -> None:
        self._journal = UsageJournal(journal_dir)
        self._dir = journal_dir
        self._db = db
        self._db_path = db_path
        self._pending: list[Row] = []  # rows journaled (or not: disk full), not yet in SQLite
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger()
        self._registered = False

    def append(self, record: dict[str, Any]) -> None:
        self._journal.append(record)  # a failure is logged there; memory still has the row
        self._pending.append(row_of(record))

    async def flush(self) -> None:
        """Write what is pending; raises (and keeps it pending) if the database failed."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._journal.rotate()
        try:
            refused = await self._write(batch)
        except BaseException:
            self._pending = batch + self._pending  # try again next round (rows are keyed)
            raise
        for row, reason in refused:
            set_aside(self._dir, record_of(row), reason)
        self._journal.committed()

    async def _write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        """Commit the batch and its rollups; the rows SQLite refused, with why
        (none, mostly)."""
        await self._register()
        try:
            added: list[Row] = []
            for start in range(0, len(batch), ROWS_PER_INSERT):
                chunk = batch[start : start + ROWS_PER_INSERT]
                ids = await self._db.execute_fetchall(
                    rollups.insert_sql(len(chunk)), [v for row in chunk for v in row]
                )
                added.extend(rollups.added_rows(chunk, list(ids)))
            await self._roll_up(added)
            await self._db.commit()
            return []
        except BaseException as exc:
            await self._rollback()
            if not isinstance(exc, Exception) or is_transient(exc):
                raise
        return await self._write_row_by_row(batch)

    async def _register(self) -> None:
        if not self._registered:
            await self._db.create_function(*rollups.HIST_ADD, deterministic=True)
            self._registered = True

    async def _roll_up(self, added: list[Row]) -> None:
        """The upserts of the rows just added, folded off the event loop."""
        if added:
            params = await asyncio.to_thread(rollups.fold, added)
            await self._db.executemany(rollups.UPSERT_SQL, params)

    async def _write_row_by_row(self, batch: list[Row]) -> list[tuple[Row, str]]:
        refused: list[tuple[Row, str]] = []
        added: list[Row] = []
        try:
            for row in batch:
                problem = row_problem(row)
                if problem is not None:
                    refused.append((row, problem))
                    continue
                try:
                    cursor = await self._db.execute(INSERT_SQL, row)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    refused.append((row, f"{type(exc).__name__}: {exc}"))
                    continue
                if cursor.rowcount == 1:
                    added.append(row)
            await self._roll_up(added)
            await self._db.commit()
        except BaseException:
            await self._rollback()
            raise
        return refused

    async def _rollback(self) -> None:
        try:
            await self._db.rollback()
        except Exception:  # noqa: BLE001 - the retry does not depend on it
            pass

    async def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        failing = False
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - kept pending (and journaled): retried
                if not failing:
                    self._log.warning(
                        "usage_flush_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        pending=len(self._pending),
                        message=f"retrying every {FLUSH_INTERVAL_S} s",
                    )
                failing = True
                continue
            if failing:
                self._log.info("usage_flush_recovered")
                failing = False
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                try:
                    await asyncio.to_thread(sweep, self._dir, self._db_path)
                except Exception:  # noqa: BLE001 - the segments stay: swept next time
                    pass

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await stop_task(self._task)
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - the journal keeps them for the next start
            self._log.error(
                "usage_flush_failed",
                error=f"{type(exc).__name__}: {exc}",
                pending=len(self._pending),
                message="left in the journal, replayed at the next start",
            )
            # rows whose append failed (disk full) live only in memory: one more
            # try; rows journaled twice are keyed, replay counts them once
            for row in self._pending:
                self._journal.append(record_of(row))
        self._journal.close()
