"""Reading the rollups: usage per day or ISO week (Monday first) in a viewer's
timezone, per alias and in total, with latency p50/p95 and TTFT p50.

Where it sits: the read side of `proxy.usage.rollups`, used by the dashboard's
data endpoints (`proxy.admin.dashboard.data`). It never reads `requests`.

In UTC the day rows answer directly. In another timezone the hour rows are
grouped by local day: each hour's UTC start plus the zone's offset at that
moment (DST changes are found once per query, as a CASE over the range), so a
day is exact in every zone whose offset is a whole number of hours; in a
half-hour zone a request is counted on the local day its UTC hour starts in.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from proxy.usage.rollups import ALL_KEYS, SUM_COLUMNS, quantile

EPOCH = date(1970, 1, 1)
TOTAL = "*"  # the `model` of a row summing every alias


@dataclass(frozen=True)
class Window:
    """Local dates [since, until) in `tz`, grouped `by` day or week."""

    since: date
    until: date
    by: str = "day"
    tz: str = "UTC"


def last_days(days: int, tz: str, by: str = "day", today: date | None = None) -> Window:
    """The window a dashboard shows: the last `days` local days, or for weeks the
    last `days // 7` ISO weeks, the current one included."""
    zone = ZoneInfo(tz)
    today = today or datetime.now(zone).date()
    if by == "week":
        monday = today - timedelta(days=today.weekday())
        return Window(monday - timedelta(weeks=days // 7 - 1), monday + timedelta(weeks=1), by, tz)
    return Window(today - timedelta(days=days - 1), today + timedelta(days=1), by, tz)


def _utc(day: date, zone: ZoneInfo) -> int:
    return int(datetime.combine(day, time(0), zone).timestamp())


def _offset(ts: int, zone: ZoneInfo) -> int:
    delta = datetime.fromtimestamp(ts, UTC).astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta else 0


def _offsets(lo: int, hi: int, zone: ZoneInfo) -> list[tuple[int, int]]:
    """(from_ts, offset) pieces covering [lo, hi): checked per day, then to the hour."""
    pieces = [(lo, _offset(lo, zone))]
    for day in range(lo, hi, 86400):
        nxt = min(day + 86400, hi)
        if _offset(nxt - 1, zone) != pieces[-1][1]:
            for hour in range(day - day % 3600, nxt, 3600):
                if _offset(hour, zone) != pieces[-1][1]:
                    pieces.append((hour, _offset(hour, zone)))
    return pieces


def _local_day_sql(pieces: list[tuple[int, int]]) -> str:
    if len(pieces) == 1:
        return f"((start + {pieces[0][1]}) / 86400)"
    cases = " ".join(
        f"WHEN start < {ts} THEN {off}"
        for ts, off in [(pieces[i + 1][0], pieces[i][1]) for i in range(len(pieces) - 1)]
    )
    return f"((start + CASE {cases} ELSE {pieces[-1][1]} END) / 86400)"


def _label_sql(window: Window, local_day: str) -> str:
    if window.by == "week":
        return f"({local_day} - (({local_day} + 3) % 7))"  # 1970-01-01 was a Thursday
    return local_day


def _plan(window: Window) -> tuple[str, str, int, int]:
    if window.by not in ("day", "week"):
        raise ValueError("by must be 'day' or 'week'")
    zone = ZoneInfo(window.tz)
    lo, hi = _utc(window.since, zone), _utc(window.until, zone)
    pieces = _offsets(lo, hi, zone)
    grain = "day" if pieces == [(lo, 0)] else "hour"
    return grain, _label_sql(window, _local_day_sql(pieces)), lo, hi


def usage_series(
    conn: sqlite3.Connection, window: Window, key_id: str | None = None
) -> list[dict[str, Any]]:
    """One row per (period, alias) with usage, and one per period with model `*`
    (every alias together), periods as ISO dates (a week: its Monday); of one key,
    or of every key when `key_id` is None."""
    grain, label, lo, hi = _plan(window)
    where = "grain = ? AND key_id = ? AND start >= ? AND start < ?"
    args: list[Any] = [grain, ALL_KEYS if key_id is None else key_id, lo, hi]
    sums = ", ".join(f"sum({c})" for c in SUM_COLUMNS)
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for row in conn.execute(
        f"SELECT {label} AS p, model, {sums} FROM usage_rollup WHERE {where} GROUP BY p, model",
        args,
    ):
        for model in (row[1], TOTAL):
            out = groups.setdefault((row[0], model), _empty(row[0], model))
            for column, value in zip(SUM_COLUMNS, row[2:], strict=True):
                out[column] += value
    hists: dict[tuple[int, str, str], dict[int, int]] = {}
    hist_sql = f"SELECT {label} AS p, model, metric, bucket, sum(n) FROM usage_hist WHERE {where}"
    if grain == "day" and window.by == "day":  # a row per period already: a GROUP BY's
        hist_sql = hist_sql.replace("sum(n)", "n")  # temporary B-tree would cost more
    else:
        hist_sql += " GROUP BY p, model, metric, bucket"
    for period, model, metric, bucket, n in conn.execute(hist_sql, args):
        for m in (model, TOTAL):
            counts = hists.setdefault((period, m, metric), {})
            counts[bucket] = counts.get(bucket, 0) + n
    rows = []
    for (period, model), out in sorted(groups.items()):
        latency = hists.get((period, model, "latency"), {})
        ttft = hists.get((period, model, "ttft"), {})
        out["latency_ms_p50"] = quantile(latency, 0.5)
        out["latency_ms_p95"] = quantile(latency, 0.95)
        out["ttft_ms_p50"] = quantile(ttft, 0.5)
        rows.append(out)
    return rows


def _empty(day_number: int, model: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "period": (EPOCH + timedelta(days=day_number)).isoformat(),
        "model": model,
    }
    row.update({c: 0 for c in SUM_COLUMNS})
    row["audio_seconds"] = row["cost_usd"] = 0.0
    return row


def periods(window: Window) -> list[str]:
    """Every period of the window as an ISO date, empty ones included (a chart's x axis)."""
    step = timedelta(weeks=1) if window.by == "week" else timedelta(days=1)
    first = window.since
    if window.by == "week":
        first -= timedelta(days=first.weekday())
    out = []
    while first < window.until:
        out.append(first.isoformat())
        first += step
    return out
