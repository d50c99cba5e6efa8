"""The usage rollups equal a scan of the raw rows, whatever the usage.

Random usage (hypothesis) goes into a fresh database the way the usage writer
and the journal replay send it (`proxy.usage.rows.insert_sql`, `INSERT ... ON
CONFLICT DO NOTHING`, some rows sent twice); the write-time rollups
(`proxy.usage.rollups`) must then equal what a scan of `requests` computes:
sums per key (and every key together), alias, hour and UTC day, latency and
TTFT histogram counts, and through `proxy.usage.rollup_query` the day and week
series in UTC and in two zones with a DST change in the range, with p50/p95 in
the bucket of the exact nearest-rank value. A database written before the
rollups existed gets them (backfilled) at its next connect.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import storage
from proxy.usage.rollup_query import TOTAL, Window, usage_series
from proxy.usage.rollups import ALL_KEYS, bucket_of
from proxy.usage.rows import COLUMNS, ROWS_PER_INSERT, insert_sql

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


def write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    for s in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[s : s + ROWS_PER_INSERT]
        conn.execute(insert_sql(len(chunk)), [v for row in chunk for v in row])
    conn.commit()


def raw(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = conn.execute("SELECT * FROM requests")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def check_tables(conn: sqlite3.Connection) -> None:
    rows = raw(conn)
    for grain, seconds in (("hour", 3600), ("day", 86400)):
        want: dict[tuple[Any, ...], list[Any]] = {}
        hist: dict[tuple[Any, ...], int] = {}
        for r in rows:
            start = int(r["ts"]) // seconds * seconds
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
        got_hist = {
            tuple(r[:5]): r[5]
            for r in conn.execute(
                "SELECT key_id, model, start, metric, bucket, n FROM usage_hist WHERE grain = ?",
                (grain,),
            )
        }
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(usage=st.lists(usage_row, max_size=120), replayed=st.integers(0, 40))
def test_rollups_equal_a_scan_of_the_raw_rows(
    tmp_path_factory: Any, usage: list[dict[str, Any]], replayed: int
) -> None:
    db = tmp_path_factory.mktemp("rollups") / "usage.db"
    conn = storage.connect(db)
    try:
        rows = [as_row(i, r) for i, r in enumerate(usage)]
        write(conn, rows)
        write(conn, rows[:replayed])  # a segment replayed: nothing counted twice
        check_tables(conn)
        for tz in ("UTC", "America/New_York", "Europe/Berlin"):
            for by in ("day", "week"):
                check_series(conn, tz, by, None)
        check_series(conn, "America/New_York", "day", "key_a")
    finally:
        conn.close()


def test_a_database_from_before_the_rollups_is_backfilled(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = storage.connect(db)
    conn.executescript(
        "DROP TRIGGER requests_rollup; DROP TABLE usage_rollup; DROP TABLE usage_hist;"
        " DROP TABLE hist_bounds;"
    )
    usage = [
        {
            **dict.fromkeys(SUMS, 7),
            "ts": T0 + i * 5000.0,
            "key_id": "key_a",
            "model": "prometheus-core",
            "status": 200,
            "audio_seconds": 0.0,
            "cost_usd": 0.25,
            "latency_ms": 100.0 + i,
            "ttft_ms": None if i % 2 else 40.0,
        }
        for i in range(30)
    ]
    write(conn, [as_row(i, r) for i, r in enumerate(usage)])
    assert (
        conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'usage_rollup'").fetchone()[0]
        == 0
    )
    conn.close()
    conn = storage.connect(db)  # the next start: rollups made and filled from the rows
    try:
        assert (
            conn.execute(
                "SELECT sum(requests) FROM usage_rollup WHERE grain = 'day' AND key_id = 'key_a'"
            ).fetchone()[0]
            == 30
        )
        check_tables(conn)
        write(conn, [as_row(100, usage[0])])  # and kept up from then on
        check_tables(conn)
    finally:
        conn.close()
