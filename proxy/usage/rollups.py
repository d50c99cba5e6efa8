"""Usage rolled up at write time: per (key, alias) and UTC hour, day and ISO week.

Where it sits: beside the `requests` table, written in the same transaction
as the raw rows by whoever inserts them: the usage writer's batches
(`proxy.usage.writer`), the journal replay (`proxy.usage.replay`) and the
backfill below. Each batch is rolled up in Python (`fold`: its rows grouped by
key, alias and hour, then by day and week, once under the key and once under
`ALL_KEYS`, so that a view of every key reads a few rows, not one per key)
and written with one upsert per group. Only the rows the INSERT actually added
are rolled up (`INSERT ... ON CONFLICT DO NOTHING RETURNING request_id`), so a
row replayed twice is counted once, and a crash before the commit loses
both the row and its rollup, which the journal then replays together.

This replaced an AFTER INSERT trigger (one upsert per row and grain, and one
per histogram bucket): per batch, the rows of one group cost one upsert.
Latency and TTFT are histograms (`proxy.usage.hist`) in BLOB columns, merged
by the `hist_add` SQL function during the upsert, so a writer's connection
must have it (`register`).

A database made before these rollups (no rollups at all, or the trigger's
tables) gets them in `install`, under `proxy.storage.migrate`'s `BEGIN
IMMEDIATE`, backfilled from its existing rows, so no row is missed or counted
twice. One whose rollups predate the stored `quantiles` column (version 2)
keeps its rows, copied into the new table (about 20 s for a year of 1,000 keys).
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.usage import hist
from proxy.usage.rows import COLUMNS, ROWS_PER_INSERT
from proxy.usage.rows import insert_sql as plain_insert_sql

ALL_KEYS = "*"  # the key_id of the rows summing every key (ids are key_... or gateway:...)
HOUR, DAY, WEEK = 3600, 86400, 7 * 86400
MONDAY0 = 4 * DAY  # 1970-01-05, the first Monday: ISO weeks start there
# meta.rollups_version: 3 = these tables; 2 = without `quantiles`; 1 = the trigger's
VERSION = 3

SUM_COLUMNS: tuple[str, ...] = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "audio_seconds",
    "cost_usd",
)
HIST_COLUMNS = ("latency_hist", "ttft_hist")

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
    latency_hist     BLOB,
    ttft_hist        BLOB,
    quantiles        BLOB GENERATED ALWAYS AS (QUANTILES) STORED,
    PRIMARY KEY (grain, start, key_id, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_rollup_key ON usage_rollup (grain, key_id, start);
"""
# `quantiles`: the latency p50 and p95 and TTFT p50 and p95 buckets, from the
# histograms' headers (`proxy.usage.hist`), NO_QUANTILE for an empty one: 4
# bytes SQLite keeps up to date on every upsert, so that the usage report reads
# a row's p50s as one small column (`proxy.usage.report`).
NO_QUANTILE = hist.HIST_BUCKETS
_NQ = f"{NO_QUANTILE:02X}" * 2
TABLES = TABLES.replace(
    "QUANTILES",
    f"CAST(ifnull(substr(latency_hist, 1, 2), X'{_NQ}')"
    f" || ifnull(substr(ttft_hist, 1, 2), X'{_NQ}') AS BLOB)",
)
_STORED = ("grain", "start", "key_id", "model", *SUM_COLUMNS, *HIST_COLUMNS)
# The primary key's order serves every key over a time range (the usage report,
# the keys table's spend) in the report's order; the index serves one key (or
# `ALL_KEYS`) over time. The index never changes on an upsert that adds to a row.

# the SQL function the upsert merges histograms with: (name, arguments, function)
HIST_ADD = ("hist_add", 2, hist.add)
UPSERT_SQL = (
    f"INSERT INTO usage_rollup (grain, start, key_id, model, {', '.join(SUM_COLUMNS)},"
    f" {', '.join(HIST_COLUMNS)}) VALUES ({', '.join('?' * (4 + len(SUM_COLUMNS) + 2))})"
    " ON CONFLICT DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    + ", "
    + ", ".join(f"{c} = {HIST_ADD[0]}({c}, excluded.{c})" for c in HIST_COLUMNS)
)

_COL = {c: i for i, c in enumerate(COLUMNS)}
_TS, _KEY, _MODEL, _STATUS = _COL["ts"], _COL["key_id"], _COL["model"], _COL["status"]
_IN, _OUT, _AUDIO, _COST = (
    _COL["input_tokens"],
    _COL["output_tokens"],
    _COL["audio_seconds"],
    _COL["cost_usd"],
)
_CACHED, _REASONING = _COL["cached_tokens"], _COL["reasoning_tokens"]
_LAT, _TTFT = _COL["latency_ms"], _COL["ttft_ms"]
_BOUNDS = hist.BOUNDS


def week_start(ts: int) -> int:
    """The UTC Monday 00:00 that starts the ISO week of `ts`."""
    return (ts - MONDAY0) // WEEK * WEEK + MONDAY0


def grain_start(grain: str, ts: int) -> int:
    if grain == "week":
        return week_start(ts)
    size = HOUR if grain == "hour" else DAY
    return ts // size * size


def register(conn: sqlite3.Connection) -> None:
    """Give a connection the `hist_add` function the upsert needs."""
    conn.create_function(*HIST_ADD, deterministic=True)


Group = list[Any]  # the 8 sums, then the latency and TTFT counts


def fold(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """A batch of `requests` rows (`proxy.usage.rows.COLUMNS` order) as upsert
    parameters: one per (grain, start, key or ALL_KEYS, alias) it touches."""
    hours: dict[tuple[str, str, int], Group] = {}
    for r in rows:
        k = (r[_KEY], r[_MODEL], int(r[_TS]) // HOUR * HOUR)
        g = hours.get(k)
        if g is None:
            g = hours[k] = [0, 0, 0, 0, 0, 0, 0.0, 0.0, {}, {}]
        g[0] += 1
        g[1] += r[_STATUS] >= 400
        g[2] += r[_IN]
        g[3] += r[_OUT]
        g[4] += r[_CACHED] or 0
        g[5] += r[_REASONING] or 0
        g[6] += r[_AUDIO]
        g[7] += r[_COST]
        b = bisect_right(_BOUNDS, r[_LAT]) - 1
        lat = g[8]
        lat[b] = lat.get(b, 0) + 1
        if r[_TTFT] is not None:
            b = bisect_right(_BOUNDS, r[_TTFT]) - 1
            ttft = g[9]
            ttft[b] = ttft.get(b, 0) + 1
    out: dict[tuple[str, int, str, str], list[Group]] = {}
    for (key, model, hour), g in hours.items():
        day, week = hour // DAY * DAY, week_start(hour)
        for who in (key, ALL_KEYS):
            for slot in (
                ("hour", hour, who, model),
                ("day", day, who, model),
                ("week", week, who, model),
            ):
                members = out.get(slot)
                if members is None:
                    out[slot] = [g]
                else:
                    members.append(g)
    blobs: dict[int, tuple[bytes | None, bytes | None]] = {}
    params = []
    for slot, members in out.items():
        if len(members) == 1:  # most per-key groups: one hour of the batch
            g = members[0]
            pair = blobs.get(id(g))
            if pair is None:
                pair = blobs[id(g)] = (hist.encode(g[8]), hist.encode(g[9]))
            params.append((*slot, *g[:8], *pair))
            continue
        sums = [sum(col) for col in zip(*(m[:8] for m in members), strict=True)]
        lat_counts: hist.Counts = {}
        ttft_counts: hist.Counts = {}
        for m in members:
            for b, n in m[8].items():
                lat_counts[b] = lat_counts.get(b, 0) + n
            for b, n in m[9].items():
                ttft_counts[b] = ttft_counts.get(b, 0) + n
        params.append((*slot, *sums, hist.encode(lat_counts), hist.encode(ttft_counts)))
    return params


def insert_sql(rows: int) -> str:
    """The multi-row INSERT of `proxy.usage.rows`, answering the ids it added."""
    return plain_insert_sql(rows) + " RETURNING request_id"


def added_rows(chunk: Sequence[Sequence[Any]], ids: Sequence[Sequence[Any]]) -> list[Any]:
    """The rows of `chunk` an INSERT ... RETURNING request_id reported as added."""
    if len(ids) == len(chunk):
        return list(chunk)
    added = {row[0] for row in ids}
    out = []
    for row in chunk:  # an id twice in one chunk (a journal holding a record twice):
        if row[0] in added:  # the first was inserted, the second was not
            out.append(row)
            added.discard(row[0])
    return out


def write_rows(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Insert `rows` into `requests` and roll up those added, in the caller's
    transaction (no commit); returns how many were added. The synchronous path
    (replay, tests, bench); the gateway's writer does the same with aiosqlite."""
    register(conn)
    added: list[Any] = []
    for s in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[s : s + ROWS_PER_INSERT]
        ids = conn.execute(insert_sql(len(chunk)), [v for row in chunk for v in row]).fetchall()
        added.extend(added_rows(chunk, ids))
    if added:
        conn.executemany(UPSERT_SQL, fold(added))
    return len(added)


def _backfill(conn: sqlite3.Connection) -> None:
    """Roll up every row already in `requests` (in slices, so memory stays small)."""
    register(conn)
    columns = ", ".join(COLUMNS)
    last = None
    while True:
        where = "" if last is None else "WHERE rowid > ?"
        batch = conn.execute(
            f"SELECT rowid, {columns} FROM requests {where} ORDER BY rowid LIMIT 50000",
            () if last is None else (last,),
        ).fetchall()
        if not batch:
            return
        last = batch[-1][0]
        conn.executemany(UPSERT_SQL, fold(row[1:] for row in batch))


def install(conn: sqlite3.Connection) -> None:
    """Create the rollup table, replacing the trigger's tables and backfilling
    once; idempotent. Called by `proxy.storage.migrate` inside its `BEGIN
    IMMEDIATE`."""
    version = conn.execute("SELECT value FROM meta WHERE name = 'rollups_version'").fetchone()
    if version is not None and version[0] == VERSION:
        return
    if version is not None and version[0] == 2:
        _add_quantiles(conn)
    else:
        _rebuild(conn)
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('rollups_version', ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (VERSION,),
    )


def _add_quantiles(conn: sqlite3.Connection) -> None:
    """Version 2's table gains `quantiles`: SQLite cannot add a STORED column
    to a table, so its rows are copied into a new one (seconds for a year of
    1,000 keys, against minutes to roll `requests` up again)."""
    conn.execute("ALTER TABLE usage_rollup RENAME TO usage_rollup_v2")
    conn.execute("DROP INDEX IF EXISTS usage_rollup_key")
    _create(conn)
    columns = ", ".join(_STORED)
    conn.execute(f"INSERT INTO usage_rollup ({columns}) SELECT {columns} FROM usage_rollup_v2")
    conn.execute("DROP TABLE usage_rollup_v2")


def _create(conn: sqlite3.Connection) -> None:
    for statement in TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _rebuild(conn: sqlite3.Connection) -> None:
    """No rollups, or the trigger's: the tables made anew and filled from `requests`."""
    conn.execute("DROP TRIGGER IF EXISTS requests_rollup")
    for table in ("usage_rollup", "usage_hist", "hist_bounds"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    _create(conn)
    _backfill(conn)
