"""CPU per row of the usage writer's batch write, with and without its rollups
(proxy.usage.rollups): 1,300-row batches (what 250 ms holds at 5,200 requests
a second) of 52-row INSERTs, as proxy.usage.writer sends them, into a fresh
database; requests spread over `--keys` keys and four aliases.

    python bench/rollup_cost.py [--keys 50] [--batches 40]

"without" is the INSERT alone (`proxy.usage.rows.insert_sql`); "with" is
`proxy.usage.rollups.write_rows`: the INSERT ... RETURNING request_id, the
batch folded in Python (`fold`, shown apart: it holds the GIL) and one upsert
per (grain, key or every key, alias) group.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from proxy import storage
from proxy.usage import rollups
from proxy.usage.rows import ROWS_PER_INSERT, insert_sql

ALIASES = ["prometheus-spark", "prometheus-lite", "prometheus-core", "prometheus-atlas"]
BATCH = 1300


def rows(n: int, seq: int, keys: int) -> list[tuple[object, ...]]:
    now = time.time()
    return [
        (
            f"req_{seq}_{i}",
            now + i * 0.01,
            f"key_{random.randrange(keys)}",
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


def plain(conn: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
    for s in range(0, len(batch), ROWS_PER_INSERT):
        chunk = batch[s : s + ROWS_PER_INSERT]
        conn.execute(insert_sql(len(chunk)), [v for row in chunk for v in row])


def measure(keys: int, batches: int, d: Path) -> tuple[float, float, float, int]:
    """CPU us per row without rollups, with them, and of `fold` alone; the batches
    alternate between the two databases, so both see the same machine load."""
    plain_db, rolled_db = storage.connect(d / "without.db"), storage.connect(d / "with.db")
    spent = {"without": 0.0, "with": 0.0, "fold": 0.0}
    for b in range(batches):
        batch = rows(BATCH, b, keys)
        for name, conn in (("without", plain_db), ("with", rolled_db)):
            t0 = time.process_time()
            with conn:
                if conn is rolled_db:
                    rollups.write_rows(conn, batch)
                else:
                    plain(conn, batch)
            spent[name] += time.process_time() - t0
        t0 = time.process_time()
        rollups.fold(batch)
        spent["fold"] += time.process_time() - t0
    groups = rolled_db.execute("SELECT count(*) FROM usage_rollup").fetchone()[0]
    plain_db.close()
    rolled_db.close()
    n = BATCH * batches / 1e6
    return spent["without"] / n, spent["with"] / n, spent["fold"] / n, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        without, with_rollups, fold, groups = measure(args.keys, args.batches, Path(d))
    print(
        f"{args.keys} keys: without rollups {without:.1f} us/row   with batch rollups"
        f" {with_rollups:.1f} us/row (of which fold {fold:.1f} us/row; {groups} rollup rows)"
    )


if __name__ == "__main__":
    main()
