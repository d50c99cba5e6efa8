"""Usage rolled up at write time: per (key, alias, hour) and (key, alias, UTC day).

Where it sits: beside the `requests` table (proxy.storage). An AFTER INSERT
trigger on `requests` adds each row that is actually inserted to its hour's and
its day's `usage_rollup` row, and its latency and TTFT to `usage_hist`, in the
same transaction as the insert, once under its key and once under `ALL_KEYS`
(so that a view of every key reads a few rows, not one per key). So the usage
writer's batches, the journal replay (`INSERT ... ON CONFLICT DO NOTHING`: a
row replayed twice is inserted, and counted, once) and anything else that
writes `requests` keep the rollups equal to the raw rows, with no code of their
own and on the writer's SQLite thread, never on the event loop.

Latency and TTFT are kept as mergeable histograms: fixed log-scale buckets, 8
per doubling from 0.1 ms (each bucket spans 9%), bucket 0 below that. Merging
is adding counts, so p50/p95 of any range of hours or days come from the
rollups (`proxy.usage.rollup_query`), never from a scan of raw requests. The
trigger finds a value's bucket in the `hist_bounds` table (an indexed lookup,
portable to SQLite builds without math functions).

A database made before the rollups gets them in `install`, under one `BEGIN
IMMEDIATE` with the backfill from its existing rows, so no row is missed or
counted twice.
"""

from __future__ import annotations

import bisect
import math
import sqlite3

HIST_BASE_MS = 0.1
BUCKETS_PER_DOUBLING = 8
HIST_BUCKETS = 8 * 27  # up to 0.1 ms x 2^27: about 3.7 hours
GRAINS = {"hour": 3600, "day": 86400}
ALL_KEYS = "*"  # the key_id of the rows summing every key (ids are key_... or gateway:...)
KEYS = ("NEW.key_id", f"'{ALL_KEYS}'")

# lower bound of each bucket; bucket 0 takes everything below bucket 1
BOUNDS: tuple[float, ...] = (-math.inf,) + tuple(
    HIST_BASE_MS * 2 ** ((i - 1) / BUCKETS_PER_DOUBLING) for i in range(1, HIST_BUCKETS)
)

_SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "audio_seconds",
    "cost_usd",
)
SUM_COLUMNS: tuple[str, ...] = _SUMS

TABLES = """
CREATE TABLE IF NOT EXISTS usage_rollup (
    grain            TEXT NOT NULL,
    start            INTEGER NOT NULL,
    key_id           TEXT NOT NULL,
    model            TEXT NOT NULL,
    requests         INTEGER NOT NULL,
    errors           INTEGER NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    audio_seconds    REAL NOT NULL,
    cost_usd         REAL NOT NULL,
    PRIMARY KEY (grain, key_id, start, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_rollup_time ON usage_rollup (grain, start);
CREATE TABLE IF NOT EXISTS usage_hist (
    grain   TEXT NOT NULL,
    start   INTEGER NOT NULL,
    key_id  TEXT NOT NULL,
    model   TEXT NOT NULL,
    metric  TEXT NOT NULL,
    bucket  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (grain, key_id, start, model, metric, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_hist_time ON usage_hist (grain, start);
CREATE TABLE IF NOT EXISTS hist_bounds (
    lo      REAL PRIMARY KEY,
    bucket  INTEGER NOT NULL
);
"""


def _start(grain: str, ts: str) -> str:
    seconds = GRAINS[grain]
    return f"(CAST({ts} AS INTEGER) / {seconds} * {seconds})"


def _bucket_sql(value: str) -> str:
    return f"(SELECT bucket FROM hist_bounds WHERE lo <= {value} ORDER BY lo DESC LIMIT 1)"


def _trigger() -> str:
    sums = ", ".join(_SUMS)
    values = (
        "1, NEW.status >= 400, NEW.input_tokens, NEW.output_tokens, NEW.cached_tokens,"
        " NEW.reasoning_tokens, NEW.audio_seconds, NEW.cost_usd"
    )
    added = ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS)
    rollups = ", ".join(
        f"('{g}', {_start(g, 'NEW.ts')}, {k}, NEW.model, {values})" for g in GRAINS for k in KEYS
    )
    hist = []
    for metric, column in (("latency", "NEW.latency_ms"), ("ttft", "NEW.ttft_ms")):
        rows = " UNION ALL ".join(
            f"SELECT '{g}' AS g, {_start(g, 'NEW.ts')} AS s, {k} AS k" for g in GRAINS for k in KEYS
        )
        hist.append(  # the bucket looked up once, joined to the four rows
            "INSERT INTO usage_hist (grain, start, key_id, model, metric, bucket, n)"
            f" SELECT v.g, v.s, v.k, NEW.model, '{metric}', b.bucket, 1"
            f" FROM ({rows}) AS v,"
            f" (SELECT bucket FROM hist_bounds WHERE lo <= {column} ORDER BY lo DESC LIMIT 1) AS b"
            f" WHERE {column} IS NOT NULL ON CONFLICT DO UPDATE SET n = n + 1;"
        )
    return (
        "CREATE TRIGGER IF NOT EXISTS requests_rollup AFTER INSERT ON requests BEGIN\n"
        f"INSERT INTO usage_rollup (grain, start, key_id, model, {sums}) VALUES {rollups}"
        f" ON CONFLICT DO UPDATE SET {added};\n" + "\n".join(hist) + "\nEND;"
    )


TRIGGER = _trigger()


def _backfill(conn: sqlite3.Connection) -> None:
    """Roll up the rows written before the trigger existed (a database of an older
    release); run in the transaction that creates the trigger."""
    sums = ", ".join(_SUMS)
    for grain, key in ((g, k) for g in GRAINS for k in ("key_id", f"'{ALL_KEYS}'")):
        start = _start(grain, "ts")
        conn.execute(
            f"INSERT INTO usage_rollup (grain, start, key_id, model, {sums})"
            f" SELECT '{grain}', {start}, {key}, model, count(*), sum(status >= 400),"
            " sum(input_tokens), sum(output_tokens), sum(cached_tokens),"
            " sum(reasoning_tokens), sum(audio_seconds), sum(cost_usd)"
            f" FROM requests GROUP BY {start}, {key}, model"
        )
        for metric, column in (("latency", "latency_ms"), ("ttft", "ttft_ms")):
            conn.execute(
                "INSERT INTO usage_hist (grain, start, key_id, model, metric, bucket, n)"
                f" SELECT '{grain}', s, k, model, '{metric}', b, count(*) FROM"
                f" (SELECT {start} AS s, {key} AS k, model, {_bucket_sql(column)} AS b"
                f"  FROM requests WHERE {column} IS NOT NULL)"
                " GROUP BY s, k, model, b"
            )


def install(conn: sqlite3.Connection) -> None:
    """Create the rollup tables and the trigger, backfilling once; idempotent.
    Called by `proxy.storage.migrate` inside its `BEGIN IMMEDIATE`."""
    present = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'requests_rollup'"
    ).fetchone()
    if present:
        return
    for statement in TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("DELETE FROM hist_bounds")
    conn.executemany(
        "INSERT INTO hist_bounds (lo, bucket) VALUES (?, ?)",
        [(-1e308 if i == 0 else lo, i) for i, lo in enumerate(BOUNDS)],
    )
    conn.execute("DELETE FROM usage_rollup")
    conn.execute("DELETE FROM usage_hist")
    _backfill(conn)
    conn.execute(TRIGGER)


def bucket_of(value_ms: float) -> int:
    """The histogram bucket the trigger puts `value_ms` in (the same bounds)."""
    return bisect.bisect_right(BOUNDS, value_ms) - 1


def bucket_value(bucket: int) -> float:
    """A bucket's representative value: the geometric middle of its bounds."""
    if bucket <= 0:
        return 0.0
    return HIST_BASE_MS * 2 ** ((bucket - 0.5) / BUCKETS_PER_DOUBLING)


def quantile_bucket(counts: dict[int, int], q: float) -> int | None:
    """The bucket holding the nearest-rank q-quantile of merged counts."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return bucket
    return max(counts)


def quantile(counts: dict[int, int], q: float) -> float | None:
    bucket = quantile_bucket(counts, q)
    return None if bucket is None else round(bucket_value(bucket), 3)
