"""The sidecar ships every usage row into the central ledger exactly once,
whatever happens mid-batch: the sidecar SIGKILLed after PostgreSQL committed
but before the watermark moved, its connection terminated while a batch is in
flight, the same rows shipped again from scratch.

The rows are written to the node's SQLite file the way the gateway's writer
does (`requests`, whose trigger queues them for shipping), many of them, so
batches are several; the sidecar is the installed `prometheus-gateway ship`.
A batch is held mid-statement deterministically: the test takes a lock on
the rollup table, so the sidecar's INSERT has written its rows and waits.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
from central_pg import ShipProcess, fetch, ledger_count, pg_dsn, ship_config, table_exists
from waiting import wait_for

from proxy import storage
from proxy.usage.ship_queue import ShipQueue

__all__ = ["pg_dsn"]

ROWS = 1200
BATCH = 100


def write_rows(db: Path, n: int, start: int = 0) -> list[tuple[Any, ...]]:
    conn = storage.connect(db)
    rows = [
        (
            f"req_{i:06d}",
            time.time() - 3600 + i,
            f"key_{i % 3}",
            ("prometheus-lite", "prometheus-core")[i % 2],
            "openai:up-lite",
            "chat",
            200 if i % 10 else 502,
            i % 2,
            7 + i % 5,
            12 + i % 7,
            0.0,
            (7 + i % 5) * 1e-7 + (12 + i % 7) * 4e-7,
            10.0 + i,
            None if i % 2 else 3.5,
            "upstream",
            None if i % 10 else "upstream_error",
        )
        for i in range(start, start + n)
    ]
    with conn:
        conn.executemany(
            "INSERT INTO requests (request_id, ts, key_id, model, deployment, endpoint, status,"
            " stream, input_tokens, output_tokens, audio_seconds, cost_usd, latency_ms, ttft_ms,"
            " usage_source, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    conn.close()
    return rows


def node(tmp_path: Path, dsn: str, **extra: Any) -> tuple[Path, ShipProcess]:
    cfg = tmp_path / "prometheus.toml"
    cfg.write_text('[storage]\npath = "gateway.db"\n' + ship_config(dsn, node_id="node-a", **extra))
    return tmp_path / "gateway.db", ShipProcess(tmp_path, cfg)


def watermark(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT watermark FROM ship_state WHERE sink = 'postgres'").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def assert_exactly_once(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    ledger = fetch(
        dsn,
        "SELECT request_id, id, key_id, input_tokens, output_tokens, cost_usd, status"
        " FROM usage_requests",
    )
    by_id = {r["request_id"]: r for r in ledger}
    assert len(ledger) == len(by_id) == len(rows)
    for row in rows:
        got = by_id[row[0]]
        assert got["id"] == f"node-a:{row[0]}"
        assert (got["key_id"], got["input_tokens"], got["output_tokens"], got["status"]) == (
            row[2],
            row[8],
            row[9],
            row[6],
        )
        assert got["cost_usd"] == row[11]  # the same double, not a rounded one
    rollup = fetch(
        dsn,
        "SELECT sum(requests)::bigint AS n, sum(errors)::bigint AS e,"
        " sum(input_tokens)::bigint AS i, sum(output_tokens)::bigint AS o FROM usage_daily",
    )[0]
    assert rollup == {
        "n": len(rows),
        "e": sum(1 for r in rows if r[6] >= 400),
        "i": sum(r[8] for r in rows),
        "o": sum(r[9] for r in rows),
    }


class RollupLock:
    """A transaction holding `usage_daily` locked: a batch's INSERT waits inside
    its statement until `release`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(dsn))
        self.loop.run_until_complete(self.conn.execute("BEGIN"))
        self.loop.run_until_complete(self.conn.execute("LOCK TABLE usage_daily IN EXCLUSIVE MODE"))

    def release(self) -> None:
        self.loop.run_until_complete(self.conn.execute("COMMIT"))
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def waiting_backend(dsn: str) -> int | None:
    rows = fetch(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%usage_requests%'",
    )
    return int(rows[0]["pid"]) if rows else None


def migrated(dsn: str, tmp_path: Path) -> None:
    """Run the sidecar once on an empty queue: the ledger's tables exist after."""
    db, ship = node(tmp_path, dsn)
    storage.connect(db).close()
    done = ship.once()
    assert done.returncode == 0, done.stderr
    assert table_exists(dsn, "usage_daily")


def test_once_ships_every_row_and_again_ships_nothing(pg_dsn: str, tmp_path: Path) -> None:
    db, ship = node(tmp_path, pg_dsn, batch_size=BATCH)
    rows = write_rows(db, ROWS)
    done = ship.once()
    assert done.returncode == 0, done.stderr
    assert_exactly_once(pg_dsn, rows)
    # a second node's copy of the ledger's state: the watermark was forgotten
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE ship_state SET watermark = 0")
    conn.close()
    assert ship.once().returncode == 0
    assert_exactly_once(pg_dsn, rows)  # every batch sent twice, every row counted once


def finish(db: Path, ship: ShipProcess, until: int) -> None:
    """Run a fresh sidecar on the same config until the watermark reaches `until`."""
    restarted = ShipProcess(ship.workdir, ship.config)
    try:
        restarted.start()
        wait_for(lambda: watermark(db) >= until, timeout=60, message="every row confirmed")
    finally:
        restarted.stop()


def test_sigkill_mid_statement(pg_dsn: str, tmp_path: Path) -> None:
    migrated(pg_dsn, tmp_path)
    db, ship = node(tmp_path, pg_dsn, batch_size=BATCH)
    rows = write_rows(db, ROWS)
    lock = RollupLock(pg_dsn)
    try:
        ship.start()
        backend = wait_for(lambda: waiting_backend(pg_dsn), message="a batch waiting mid-INSERT")
        ship.kill()  # the statement is running on the server
    finally:
        lock.release()
    wait_for(
        lambda: (
            backend not in {r["pid"] for r in fetch(pg_dsn, "SELECT pid FROM pg_stat_activity")}
        ),
        message="the killed sidecar's backend to end",
    )
    assert ledger_count(pg_dsn) in (0, BATCH) and watermark(db) == 0
    finish(db, ship, ROWS)
    assert_exactly_once(pg_dsn, rows)


def test_sigkill_after_commit_before_watermark(pg_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL committed the first batch; the sidecar dies before its SQLite
    watermark moved (held back by a lock on the local file): the batch is sent
    again after the restart and counted once."""
    migrated(pg_dsn, tmp_path)
    db, ship = node(tmp_path, pg_dsn, batch_size=BATCH)
    rows = write_rows(db, ROWS)
    queue = ShipQueue(db, "node-a", ["postgres"])
    queue.stamp()  # so the sidecar needs the write lock only to confirm
    queue.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        ship.start()
        wait_for(lambda: ledger_count(pg_dsn) >= BATCH, message="the first batch committed")
        ship.kill()
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert ledger_count(pg_dsn) == BATCH and watermark(db) == 0
    finish(db, ship, ROWS)
    assert_exactly_once(pg_dsn, rows)


def test_connection_terminated_mid_batch(pg_dsn: str, tmp_path: Path) -> None:
    migrated(pg_dsn, tmp_path)
    db, ship = node(tmp_path, pg_dsn, batch_size=BATCH)
    rows = write_rows(db, ROWS)
    lock = RollupLock(pg_dsn)
    try:
        ship.start()
        backend = wait_for(lambda: waiting_backend(pg_dsn), message="a batch waiting mid-INSERT")
        fetch(pg_dsn, "SELECT pg_terminate_backend($1)", backend)
    finally:
        lock.release()
    try:
        wait_for(lambda: watermark(db) >= ROWS, timeout=60, message="every row confirmed")
        # while the sidecar keeps running: more rows, a cut in the middle of them
        more = write_rows(db, ROWS, start=ROWS)
        lock = RollupLock(pg_dsn)
        try:
            backend = wait_for(lambda: waiting_backend(pg_dsn), message="a second batch held")
            fetch(pg_dsn, "SELECT pg_terminate_backend($1)", backend)
        finally:
            lock.release()
        wait_for(lambda: watermark(db) >= 2 * ROWS, timeout=60, message="every row confirmed")
    finally:
        ship.stop()
    assert ship.log_text().count("ship_failed") >= 2, ship.log_text()
    assert_exactly_once(pg_dsn, rows + more)
