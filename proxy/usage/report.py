"""Usage rows per (key, alias, hour, day or week), read from SQLite.

Used by `prometheus-gateway usage`, `GET /admin/usage` (filters: key, alias,
from/to) and `GET /v1/usage` (the caller's own key only); all return the
same rows (CONTRACT.md: key_id, model, period, requests, input_tokens,
output_tokens, audio_seconds, cost_usd, latency_ms_p50, ttft_ms_p50, and
here also errors and key_name).
"""

from __future__ import annotations

import sqlite3
import statistics
from datetime import UTC, datetime
from typing import Any

PERIODS = {
    "hour": "strftime('%Y-%m-%dT%H:00:00Z', ts, 'unixepoch')",
    "day": "date(ts, 'unixepoch')",
    "week": "date(ts, 'unixepoch', 'weekday 0', '-6 days')",  # the Monday that starts it
}


def query_usage(
    conn: sqlite3.Connection,
    key_id: str | None = None,
    by: str = "day",
    *,
    alias: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[dict[str, Any]]:
    """Rows of one key (or all), one alias (or all), requests that began at
    `since` or later and before `until` (seconds since the epoch)."""
    if by not in PERIODS:
        raise ValueError("by must be 'hour', 'day' or 'week'")
    sql = (
        f"SELECT r.key_id, r.model, {PERIODS[by]} AS period, r.status, r.input_tokens,"
        " r.output_tokens, r.audio_seconds, r.cost_usd, r.latency_ms, r.ttft_ms, k.name,"
        " r.cached_tokens, r.reasoning_tokens"
        " FROM requests r LEFT JOIN api_keys k ON k.id = r.key_id"
    )
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (
        ("r.key_id = ?", key_id or None),
        ("r.model = ?", alias or None),
        ("r.ts >= ?", since),
        ("r.ts < ?", until),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY period, r.key_id, r.model"
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (
        kid,
        model,
        period,
        status,
        tin,
        tout,
        audio,
        cost,
        lat,
        ttft,
        name,
        cached,
        reasoning,
    ) in conn.execute(sql, args):
        row = groups.get((kid, model, period))
        if row is None:
            row = groups[(kid, model, period)] = {
                "key_id": kid,
                "key_name": name,
                "model": model,
                "period": period,
                "requests": 0,
                "errors": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "audio_seconds": 0.0,
                "cost_usd": 0.0,
                "_lat": [],
                "_ttft": [],
            }
        row["requests"] += 1
        row["errors"] += status >= 400
        row["input_tokens"] += tin
        row["output_tokens"] += tout
        row["cached_tokens"] += cached or 0
        row["reasoning_tokens"] += reasoning or 0
        row["audio_seconds"] += audio
        row["cost_usd"] += cost
        row["_lat"].append(lat)
        if ttft is not None:
            row["_ttft"].append(ttft)
    rows = []
    for row in groups.values():
        lat, ttft = row.pop("_lat"), row.pop("_ttft")
        row["latency_ms_p50"] = round(statistics.median(lat), 3) if lat else None
        row["ttft_ms_p50"] = round(statistics.median(ttft), 3) if ttft else None
        rows.append(row)
    return rows


def parse_time(text: str) -> float:
    """A `from`/`to` filter: seconds since the epoch, or an ISO 8601 date or time
    (UTC unless it names a zone). ValueError for anything else."""
    try:
        stamp = float(text)
    except ValueError:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        stamp = when.timestamp()
    if not 0 <= stamp < 1e11:
        raise ValueError("out of range")
    return stamp
