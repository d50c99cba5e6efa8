"""The sidecar's side of the local SQLite file: stamping rows, reading past
the watermark, confirming it, pruning.

Each round first stamps every row of `requests` that has no `ship_seq` yet
(new rows, and rows replayed late from a journal) with the next numbers of
the `meta.ship_seq` counter, in one short transaction (`storage.migrate_ship`
added the column). Each sink has a watermark in `ship_state`: the highest
seq it confirmed. A batch is read past it in seq order and the watermark
moves only after the sink confirmed, so a sidecar killed in between sends the
batch again (the sinks drop rows they already have, by id). The gateway never
waits on any of this: WAL lets it append while these reads run, and a stamp
or prune transaction is short (the gateway's writer retries a busy database).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import storage

Row = dict[str, Any]
STAMP_CHUNK = 5000  # rows stamped per transaction: keeps each write lock short


@dataclass(frozen=True, slots=True)
class Backlog:
    rows: int  # waiting to ship (unstamped, or past the lowest watermark)
    oldest_ts: float | None  # the oldest waiting row's request time


class ShipQueue:
    def __init__(self, db_path: Path, node_id: str, sinks: list[str]) -> None:
        # its own connection, used from `asyncio.to_thread` (one call at a time)
        self._conn = sqlite3.connect(db_path, timeout=5.0, check_same_thread=False)
        for pragma in storage.PRAGMAS:
            self._conn.execute(pragma)
        self._node = node_id
        self._sinks = sinks
        # no write at start when the file is ready: a sidecar restarting while
        # the gateway writes never waits for the lock
        if not self._migrated():
            storage.connect(db_path).close()  # the gateway's schema, if it never ran here
            storage.migrate_ship(self._conn)
        known = {r[0] for r in self._conn.execute("SELECT sink FROM ship_state")}
        self._conn.rollback()
        with self._conn:
            for sink in set(sinks) - known:
                self._conn.execute(
                    "INSERT OR IGNORE INTO ship_state (sink, watermark) VALUES (?, 0)", (sink,)
                )

    def _migrated(self) -> bool:
        try:
            self._conn.execute("SELECT ship_seq FROM requests LIMIT 0")
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'ship_seq'").fetchone()
            self._conn.execute("SELECT sink FROM ship_state LIMIT 0")
        except sqlite3.OperationalError:  # no such table or column
            return False
        finally:
            self._conn.rollback()
        return row is not None

    def stamp(self) -> int:
        """Give rows without a seq the next ones, oldest rowid first; how many."""
        total = 0
        while True:
            waiting = self._conn.execute(
                "SELECT 1 FROM requests WHERE ship_seq IS NULL LIMIT 1"
            ).fetchone()
            self._conn.rollback()
            if waiting is None:  # nothing new: no write lock taken
                return total
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                rowids = [
                    r[0]
                    for r in self._conn.execute(
                        "SELECT rowid FROM requests WHERE ship_seq IS NULL ORDER BY rowid LIMIT ?",
                        (STAMP_CHUNK,),
                    )
                ]
                if not rowids:
                    return total
                base = int(
                    self._conn.execute("SELECT value FROM meta WHERE name = 'ship_seq'").fetchone()[
                        0
                    ]
                )
                self._conn.executemany(
                    "UPDATE requests SET ship_seq = ? WHERE rowid = ?",
                    [(base + i, rid) for i, rid in enumerate(rowids, start=1)],
                )
                self._conn.execute(
                    "UPDATE meta SET value = ? WHERE name = 'ship_seq'", (base + len(rowids),)
                )
            total += len(rowids)

    def watermark(self, sink: str) -> int:
        row = self._conn.execute("SELECT watermark FROM ship_state WHERE sink = ?", (sink,))
        mark = int(row.fetchone()[0])
        self._conn.rollback()
        return mark

    def read(self, sink: str, limit: int) -> tuple[list[Row], int]:
        """Up to `limit` rows past the sink's watermark, in seq order, and the seq
        the watermark moves to once they are confirmed."""
        mark = self.watermark(sink)
        cur = self._conn.execute(
            "SELECT * FROM requests WHERE ship_seq > ? ORDER BY ship_seq LIMIT ?", (mark, limit)
        )
        names = [d[0] for d in cur.description]
        rows: list[Row] = []
        last = mark
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            last = int(row.pop("ship_seq"))
            row["node_id"] = self._node
            row["id"] = f"{self._node}:{row['request_id']}"
            rows.append(row)
        self._conn.rollback()  # end the read transaction: WAL can checkpoint
        return rows, last

    def confirm(self, sink: str, seq: int) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE ship_state SET watermark = max(watermark, ?) WHERE sink = ?", (seq, sink)
            )

    def _low_watermark(self) -> int:
        marks = [self.watermark(s) for s in self._sinks]
        return min(marks) if marks else 0

    def backlog(self) -> Backlog:
        count, oldest = self._conn.execute(
            "SELECT count(*), min(ts) FROM requests WHERE ship_seq IS NULL OR ship_seq > ?",
            (self._low_watermark(),),
        ).fetchone()
        self._conn.rollback()
        return Backlog(int(count), oldest)

    def prune(self, retain_days: float, now: float | None = None) -> int:
        """Delete rows every sink confirmed that are older than `retain_days`;
        how many."""
        cutoff = (time.time() if now is None else now) - retain_days * 86400.0
        with self._conn:
            cur = self._conn.execute(
                "DELETE FROM requests WHERE ts < ? AND ship_seq <= ?",
                (cutoff, self._low_watermark()),
            )
        return cur.rowcount

    def close(self) -> None:
        self._conn.close()
