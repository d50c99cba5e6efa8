"""CPU per row of the usage writer's batch INSERT with and without the rollup
trigger (proxy.usage.rollups): 1,300-row batches of 52-row INSERTs, as
proxy.usage.writer sends them, into a fresh database.

    python bench/rollup_cost.py
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from pathlib import Path

from proxy import storage
from proxy.usage.rows import ROWS_PER_INSERT, insert_sql

ALIASES = ["prometheus-spark", "prometheus-lite", "prometheus-core", "prometheus-atlas"]
BATCH, BATCHES = 1300, 40


def rows(n: int, seq: int) -> list[tuple[object, ...]]:
    now = time.time()
    return [
        (
            f"req_{seq}_{i}",
            now + i * 0.01,
            f"key_{random.randrange(50)}",
            random.choice(ALIASES),
            "sim:x",
            "chat",
            200,
            1,
            random.randrange(1, 900),
            random.randrange(1, 900),
            0.0,
            random.random() / 1000,
            random.uniform(5, 3000),
            random.uniform(5, 900),
            "upstream",
            None,
            None,
            0,
            0,
        )
        for i in range(n)
    ]


def measure(conn: sqlite3.Connection) -> float:
    spent = 0.0
    for b in range(BATCHES):
        batch = rows(BATCH, b)
        t0 = time.process_time()
        for s in range(0, BATCH, ROWS_PER_INSERT):
            chunk = batch[s : s + ROWS_PER_INSERT]
            conn.execute(insert_sql(len(chunk)), [v for row in chunk for v in row])
        conn.commit()
        spent += time.process_time() - t0
    return spent / (BATCH * BATCHES) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        conn = storage.connect(Path(d) / "with.db")
        with_trigger = measure(conn)
        conn.close()
        conn = storage.connect(Path(d) / "without.db")
        conn.execute("DROP TRIGGER requests_rollup")
        without = measure(conn)
        conn.close()
    print(f"without trigger: {without:.1f} us/row   with rollup trigger: {with_trigger:.1f} us/row")


if __name__ == "__main__":
    main()
