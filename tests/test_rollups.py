"""The usage rollups equal a scan of the raw rows, whatever the usage.

Random usage (hypothesis) goes into a fresh database the way the journal
replay sends it (`proxy.usage.rollups.write_rows`: `INSERT ... ON CONFLICT DO
NOTHING RETURNING`, then one upsert per group of the rows added), in random
batches, some rows sent twice; the write-time rollups must then equal what a
scan of `requests` computes: sums per key (and every key together), alias, UTC
hour, day and ISO week, latency and TTFT histogram counts; through
`proxy.usage.rollup_query` the dashboard's day and week series in UTC and in
two zones with a DST change in the range; and through `proxy.usage.report`
the `usage` rows by hour, day and week, in UTC and New York, with and without
`from`/`to` (on and off the hour), with p50/p95 in the bucket of the exact
nearest-rank value. The live writer (`UsageWriter`, aiosqlite) makes the same
rollups, a bad row and a repeated row included. A database written before
these rollups (none at all, or the trigger's tables) gets them, backfilled,
at its next connect; one whose rollups lack the stored p50/p95 buckets
(`quantiles`, version 2) gets them without a backfill, its rows kept.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import storage
from proxy.usage import rollups
from proxy.usage.hist import bucket_of, decode, quantile_bucket
from proxy.usage.report import query_usage
from proxy.usage.rollup_query import TOTAL, Window, usage_series
from proxy.usage.rollups import ALL_KEYS, week_start
from proxy.usage.rows import COLUMNS

T0 = datetime(2026, 3, 5, tzinfo=UTC).timestamp()  # US and EU DST changes follow
SPAN = 28 * 86400
SUMS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")

usage_row = st.fixed_dictionaries(
    {
        "ts": st.floats(T0, T0 + SPAN),
        "key_id": st.sampled_from(["key_a", "key_b", "key_c"]),
        "model": st.sampled_from(["prometheus-core", "prometheus-echo", "prometheus-lite"]),
        "status": st.sampled_from([200, 200, 200, 400, 502]),
        "input_tokens": st.integers(0, 10**6),
        "output_tokens": st.integers(0, 10**6),
        "cached_tokens": st.integers(0, 1000),
        "reasoning_tokens": st.integers(0, 1000),
        "audio_seconds": st.floats(0, 3600),
        "cost_usd": st.floats(0, 5),
        "latency_ms": st.floats(0, 600_000),
        "ttft_ms": st.none() | st.floats(0, 60_000),
    }
)


def as_row(i: int, r: dict[str, Any]) -> tuple[Any, ...]:
    full = {
        **r,
        "request_id": f"req_{i}",
        "deployment": "sim:x",
        "endpoint": "chat",
        "stream": 0,
        "usage_source": "upstream",
        "error": None,
        "audio_source": None,
    }
    return tuple(full[c] for c in COLUMNS)


def write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], batch: int = 1000) -> None:
    for s in range(0, len(rows), batch):
        with conn:
            rollups.write_rows(conn, rows[s : s + batch])


def raw(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM requests")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def check_tables(conn: sqlite3.Connection) -> None:
    rows = raw(conn)
    for grain, seconds in (("hour", 3600), ("day", 86400), ("week", 0)):
        want: dict[tuple[Any, ...], list[Any]] = {}
        hist: dict[tuple[Any, ...], int] = {}
        for r in rows:
            ts = int(r["ts"])
            start = week_start(ts) if grain == "week" else ts // seconds * seconds
            for key in (r["key_id"], ALL_KEYS):  # each key, and every key together
                g = want.setdefault((key, r["model"], start), [0, 0, 0, 0, 0, 0, 0.0, 0.0])
                g[0] += 1
                g[1] += r["status"] >= 400
                for i, c in enumerate(SUMS):
                    g[2 + i] += r[c]
                g[6] += r["audio_seconds"]
                g[7] += r["cost_usd"]
                for metric in ("latency", "ttft"):
                    value = r[f"{metric}_ms"]
                    if value is not None:
                        k = (key, r["model"], start, metric, bucket_of(value))
                        hist[k] = hist.get(k, 0) + 1
        got = {
            (k, m, s): list(rest)
            for k, m, s, *rest in conn.execute(
                "SELECT key_id, model, start, requests, errors, input_tokens, output_tokens,"
                " cached_tokens, reasoning_tokens, audio_seconds, cost_usd"
                " FROM usage_rollup WHERE grain = ?",
                (grain,),
            )
        }
        assert got.keys() == want.keys()
        for k, w in want.items():
            assert got[k][:6] == w[:6], k
            assert math.isclose(got[k][6], w[6], rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(got[k][7], w[7], rel_tol=1e-9, abs_tol=1e-12)
        got_hist = {}
        for k, m, s, lat, ttft, quantiles in conn.execute(
            "SELECT key_id, model, start, latency_hist, ttft_hist, quantiles FROM usage_rollup"
            " WHERE grain = ?",
            (grain,),
        ):
            for metric, blob in (("latency", lat), ("ttft", ttft)):
                for bucket, n in decode(blob).items():
                    got_hist[(k, m, s, metric, bucket)] = n
            want_q = [
                rollups.NO_QUANTILE if b is None else b
                for blob in (lat, ttft)
                for b in (quantile_bucket(decode(blob), 0.5), quantile_bucket(decode(blob), 0.95))
            ]
            assert list(quantiles) == want_q, (k, m, s)
        assert got_hist == hist


def nearest_rank_bucket(values: list[float], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return bucket_of(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def check_series(conn: sqlite3.Connection, tz: str, by: str, key_id: str | None) -> None:
    zone = ZoneInfo(tz)
    first = datetime.fromtimestamp(T0, zone).date() - timedelta(days=1)
    window = Window(first, first + timedelta(days=35), by, tz)
    want: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in raw(conn):
        if key_id is not None and r["key_id"] != key_id:
            continue
        day = datetime.fromtimestamp(math.floor(r["ts"]), zone).date()  # as SQLite truncates
        if by == "week":
            day -= timedelta(days=day.weekday())
        for model in (r["model"], TOTAL):
            want.setdefault((day.isoformat(), model), []).append(r)
    got = {(row["period"], row["model"]): row for row in usage_series(conn, window, key_id)}
    assert got.keys() == want.keys()
    for k, rs in want.items():
        row = got[k]
        assert row["requests"] == len(rs)
        assert row["errors"] == sum(r["status"] >= 400 for r in rs)
        assert row["input_tokens"] == sum(r["input_tokens"] for r in rs)
        assert row["output_tokens"] == sum(r["output_tokens"] for r in rs)
        assert math.isclose(row["cost_usd"], sum(r["cost_usd"] for r in rs), abs_tol=1e-9)
        latencies = [r["latency_ms"] for r in rs]
        ttfts = [r["ttft_ms"] for r in rs if r["ttft_ms"] is not None]
        for column, values, q in (
            ("latency_ms_p50", latencies, 0.5),
            ("latency_ms_p95", latencies, 0.95),
            ("ttft_ms_p50", ttfts, 0.5),
        ):
            want_bucket = nearest_rank_bucket(values, q)
            if want_bucket is None:
                assert row[column] is None
            else:
                assert bucket_of(row[column]) == want_bucket, (k, column)


def check_report(
    conn: sqlite3.Connection,
    by: str,
    tz: str,
    key_id: str | None,
    since: float | None,
    until: float | None,
) -> None:
    """`usage` rows against a scan: a request counts when its UTC hour starts in
    [since, until), in the local day (or ISO week) in `tz` that hour starts in."""
    zone = ZoneInfo(tz)
    want: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in raw(conn):
        hour = int(r["ts"]) // 3600 * 3600
        if key_id is not None and r["key_id"] != key_id:
            continue
        if (since is not None and hour < since) or (until is not None and hour >= until):
            continue
        if by == "hour":
            period = datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:00:00Z")
        else:
            day = datetime.fromtimestamp(hour, zone).date()
            if by == "week":
                day -= timedelta(days=day.weekday())
            period = day.isoformat()
        want.setdefault((period, r["key_id"], r["model"]), []).append(r)
    got = query_usage(conn, key_id, by, since=since, until=until, tz=tz)
    keys = [(row["period"], row["key_id"], row["model"]) for row in got]
    assert keys == sorted(want), (by, tz, since, until)  # every group once, in order
    for row in got:
        rs = want[(row["period"], row["key_id"], row["model"])]
        assert row["requests"] == len(rs)
        assert row["errors"] == sum(r["status"] >= 400 for r in rs)
        for column in SUMS:
            assert row[column] == sum(r[column] for r in rs), column
        assert math.isclose(row["cost_usd"], sum(r["cost_usd"] for r in rs), abs_tol=1e-9)
        audio = sum(r["audio_seconds"] for r in rs)
        assert math.isclose(row["audio_seconds"], audio, rel_tol=1e-9, abs_tol=1e-6)
        for column, values, q in (
            ("latency_ms_p50", [r["latency_ms"] for r in rs], 0.5),
            ("latency_ms_p95", [r["latency_ms"] for r in rs], 0.95),
            ("ttft_ms_p50", [r["ttft_ms"] for r in rs if r["ttft_ms"] is not None], 0.5),
        ):
            want_bucket = nearest_rank_bucket(values, q)
            if want_bucket is None:
                assert row[column] is None
            else:
                assert bucket_of(row[column]) == want_bucket, (row, column)


edge = (
    st.none() | st.integers(-30, 24 * 30).map(lambda h: T0 + h * 3600.0) | st.floats(T0, T0 + SPAN)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    usage=st.lists(usage_row, max_size=120),
    replayed=st.integers(0, 40),
    batch=st.integers(1, 150),
    since=edge,
    until=edge,
)
def test_rollups_equal_a_scan_of_the_raw_rows(
    tmp_path_factory: Any,
    usage: list[dict[str, Any]],
    replayed: int,
    batch: int,
    since: float | None,
    until: float | None,
) -> None:
    db = tmp_path_factory.mktemp("rollups") / "usage.db"
    conn = storage.connect(db)
    try:
        rows = [as_row(i, r) for i, r in enumerate(usage)]
        twice = [r for row in rows[:replayed] for r in (row, row)]  # twice in one INSERT
        write(conn, twice + rows[replayed:], batch)
        write(conn, rows[:replayed], batch)  # a segment replayed: nothing counted twice
        check_tables(conn)
        for tz in ("UTC", "America/New_York", "Europe/Berlin"):
            for by in ("day", "week"):
                check_series(conn, tz, by, None)
        check_series(conn, "America/New_York", "day", "key_a")
        for by in ("hour", "day", "week"):
            for tz in ("UTC", "America/New_York"):
                check_report(conn, by, tz, None, None, None)
                check_report(conn, by, tz, "key_b", since, until)
            check_report(conn, by, "UTC", None, since, until)
    finally:
        conn.close()


async def test_the_live_writer_rolls_up_what_it_adds(tmp_path: Path) -> None:
    from proxy.usage.writer import UsageWriter

    db_path = tmp_path / "usage.db"
    db = await storage.connect_async(db_path)
    writer = UsageWriter(tmp_path / "usage.db.journal", db, db_path)
    try:
        rows = [as_row(i, r) for i, r in enumerate(SAMPLE)]
        records = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
        for record in records[:20]:
            writer.append(record)
        await writer.flush()
        for record in records[15:]:  # five again (a retried batch): counted once
            writer.append(record)
        writer.append({**records[0], "request_id": "req_bad", "input_tokens": "many"})
        await writer.flush()
    finally:
        await writer.close()
        await db.close()
    conn = storage.connect(db_path)
    try:
        assert conn.execute("SELECT sum(requests) FROM usage_rollup WHERE grain = 'week'"
                            " AND key_id = '*'").fetchone() == (len(SAMPLE),)  # fmt: skip
        check_tables(conn)
        check_report(conn, "day", "UTC", None, None, None)
    finally:
        conn.close()


SAMPLE = [
    {
        **dict.fromkeys(SUMS, 7),
        "ts": T0 + i * 5000.0,
        "key_id": "key_a" if i % 3 else "key_b",
        "model": "prometheus-core" if i % 4 else "prometheus-lite",
        "status": 200 if i % 5 else 502,
        "audio_seconds": 0.0,
        "cost_usd": 0.25,
        "latency_ms": 100.0 + i,
        "ttft_ms": None if i % 2 else 40.0,
    }
    for i in range(30)
]

TRIGGER_ERA = """
DROP TABLE usage_rollup;
DELETE FROM meta WHERE name = 'rollups_version';
CREATE TABLE usage_rollup (grain TEXT, start INTEGER, key_id TEXT, model TEXT, requests INTEGER);
CREATE TABLE usage_hist (grain TEXT, start INTEGER, key_id TEXT, model TEXT, n INTEGER);
CREATE TABLE hist_bounds (lo REAL PRIMARY KEY, bucket INTEGER);
CREATE TRIGGER requests_rollup AFTER INSERT ON requests BEGIN
  INSERT INTO usage_rollup VALUES ('day', 0, NEW.key_id, NEW.model, 1);
END;
"""
NO_ROLLUPS = "DROP TABLE usage_rollup; DELETE FROM meta WHERE name = 'rollups_version';"


@pytest.mark.parametrize("era", [NO_ROLLUPS, TRIGGER_ERA], ids=["no-rollups", "trigger"])
def test_a_database_from_before_these_rollups_is_backfilled(tmp_path: Path, era: str) -> None:
    db = tmp_path / "old.db"
    conn = storage.connect(db)
    conn.executescript(era)
    columns = ", ".join(COLUMNS)
    with conn:  # rows written by an older release: no rollups of ours
        conn.executemany(
            f"INSERT INTO requests ({columns}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [as_row(i, r) for i, r in enumerate(SAMPLE)],
        )
    conn.close()
    conn = storage.connect(db)  # the next start: rollups made and filled from the rows
    try:
        assert (
            conn.execute(
                "SELECT sum(requests) FROM usage_rollup WHERE grain = 'day' AND key_id = '*'"
            ).fetchone()[0]
            == 30
        )
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert not names & {"requests_rollup", "usage_hist", "hist_bounds"}
        check_tables(conn)
        write(conn, [as_row(100, SAMPLE[0])])  # and kept up from then on
        check_tables(conn)
    finally:
        conn.close()
    conn = storage.connect(db)  # a later start does not backfill again
    try:
        check_tables(conn)
    finally:
        conn.close()


def test_usage_refuses_an_unknown_zone_and_a_zone_for_the_central_ledger(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "prometheus.toml"
    config.write_text('[storage]\npath = "usage.db"\n')
    for args, said in (
        (["--tz", "Mars/Base"], "not a known IANA timezone"),
        (["--central", "--tz", "Asia/Tokyo"], "UTC days and weeks only"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "usage", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and said in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--config", str(config), "--tz", "Asia/Tokyo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "(no usage yet)" in done.stdout


V2_TABLE = """
ALTER TABLE usage_rollup RENAME TO fresh;
DROP INDEX usage_rollup_key;
CREATE TABLE usage_rollup (
    grain TEXT NOT NULL, start INTEGER NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, audio_seconds REAL NOT NULL, cost_usd REAL NOT NULL,
    latency_hist BLOB, ttft_hist BLOB, PRIMARY KEY (grain, start, key_id, model)
) WITHOUT ROWID;
INSERT INTO usage_rollup SELECT grain, start, key_id, model, requests, errors, input_tokens,
    output_tokens, cached_tokens, reasoning_tokens, audio_seconds, cost_usd, latency_hist,
    ttft_hist FROM fresh;
DROP TABLE fresh;
CREATE INDEX usage_rollup_key ON usage_rollup (grain, key_id, start);
UPDATE meta SET value = 2 WHERE name = 'rollups_version';
"""


def test_rollups_without_stored_quantiles_get_them_and_keep_their_rows(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    conn = storage.connect(db)
    write(conn, [as_row(i, r) for i, r in enumerate(SAMPLE)])
    every = "SELECT * FROM usage_rollup ORDER BY grain, start, key_id, model"
    want = conn.execute(every).fetchall()
    want_report = query_usage(conn, None, "week")
    conn.executescript(V2_TABLE)  # as the previous release left it
    conn.commit()
    conn.close()
    conn = storage.connect(db)  # the next start
    try:
        assert conn.execute(every).fetchall() == want
        assert query_usage(conn, None, "week") == want_report
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "usage_rollup_key" in names and "usage_rollup_v2" not in names
        write(conn, [as_row(100 + i, r) for i, r in enumerate(SAMPLE)])  # kept up from then on
        check_tables(conn)
        check_report(conn, "day", "UTC", None, None, None)
    finally:
        conn.close()
