"""Reading the rollups: usage per local day or ISO week (Monday first) in any
timezone, per key and alias, with latency p50/p95 and TTFT p50.

Where it sits: the read side of `proxy.usage.rollups`, used by the usage report
(`proxy.usage.report`: `usage`, `/admin/usage`, `/v1/usage`) and the
dashboard's data (`proxy.admin.dashboard.data`). It never reads `requests`.

A range of periods is given by its boundaries: UTC instants, each rounded up
to a whole hour (so a request counts in the period its UTC hour starts in:
exact for every zone whose offset is whole hours, and for `from`/`to` on the
hour). Each boundary b has an anchor a, the nearest start of a stored day (or
week) row, and a period [b_i, b_i+1) is read as the day (or week) rows in
[a_i, a_i+1), plus the hour rows in [b_i, a_i) and minus those in
[b_i+1, a_i+1) (taken away where the interval runs backwards). Sums and
histogram counts both add and subtract exactly. In UTC every b is its own
anchor and only day or week rows are read; elsewhere each boundary costs the
hour rows between local and UTC midnight (at most 12, 14 for +14 zones).
"""

from __future__ import annotations

import math
import operator
import sqlite3
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from proxy.usage import hist
from proxy.usage.rollups import ALL_KEYS, DAY, HOUR, MONDAY0, SUM_COLUMNS, WEEK

EPOCH = date(1970, 1, 1)
TOTAL = "*"  # the `model` of a row summing every alias
SPAN = {"hour": HOUR, "day": DAY, "week": WEEK}
_COLUMNS = "start, key_id, model, " + ", ".join(SUM_COLUMNS) + ", latency_hist, ttft_hist"
# What one stored row shows: its sums, and its latency p50 and p95 and TTFT p50
# buckets in `quantiles` (4 bytes; one column, not four: Python's sqlite3 costs
# about as much per column fetched as for the value in it).
ROW_COLUMNS = "key_id, model, " + ", ".join(SUM_COLUMNS) + ", quantiles"

Acc = list[Any]  # the 8 sums, then the latency and TTFT counts


def _new_acc(dense: bool = True) -> Acc:
    """Counts as lists indexed by bucket (`dense`: cheap to add many rows into,
    what a view of few groups wants) or as dicts (cheap to hold by the
    hundred thousand, what the report of every key wants)."""
    if dense:
        return [0, 0, 0, 0, 0, 0, 0.0, 0.0, [0] * hist.HIST_BUCKETS, [0] * hist.HIST_BUCKETS]
    return [0, 0, 0, 0, 0, 0, 0.0, 0.0, {}, {}]


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


def ceil_hour(ts: float) -> int:
    """The first whole UTC hour at or after `ts`."""
    return -(-math.ceil(ts) // HOUR) * HOUR


def local_midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime.combine(day, time(0), zone).timestamp())


def anchor(ts: int, grain: str) -> int:
    """The start of a stored `grain` row nearest to `ts` (the earlier on a tie)."""
    if grain == "hour":
        return ts
    span, origin = (WEEK, MONDAY0) if grain == "week" else (DAY, 0)
    return (ts - origin + span // 2 - 1) // span * span + origin


def _where(key: str | None, alias: str | None) -> tuple[str, list[Any]]:
    """`key`: one key id, ALL_KEYS, or None for every key on its own."""
    sql, args = "", []
    if key is None:
        sql += f" AND key_id != '{ALL_KEYS}'"
    else:
        sql += " AND key_id = ?"
        args.append(key)
    if alias is not None:
        sql += " AND model = ?"
        args.append(alias)
    return sql, args


def rows_between(
    conn: sqlite3.Connection,
    grain: str,
    lo: int,
    hi: int,
    key: str | None,
    alias: str | None,
    columns: str = _COLUMNS,
) -> Iterator[tuple[Any, ...]]:
    """Stored rows of `grain` starting in [lo, hi), in (start, key, model) order."""
    where, args = _where(key, alias)
    return conn.execute(
        f"SELECT {columns} FROM usage_rollup WHERE grain = ? AND start >= ? AND start < ?"
        f"{where} ORDER BY start, key_id, model",
        [grain, lo, hi, *args],
    )


def stored_starts(
    conn: sqlite3.Connection,
    grain: str,
    lo: int,
    hi: int,
    key: str | None,
    alias: str | None,
) -> list[int]:
    """The starts in [lo, hi) of the `grain` rows of `key` (None: of any key,
    found from their `ALL_KEYS` rows, written with them), ascending."""
    sql = (
        "SELECT DISTINCT start FROM usage_rollup WHERE grain = ? AND key_id = ?"
        " AND start >= ? AND start < ?"
    )
    args: list[Any] = [grain, key or ALL_KEYS, lo, hi]
    if alias is not None:
        sql += " AND model = ?"
        args.append(alias)
    return [start for (start,) in conn.execute(sql + " ORDER BY start", args)]


def period_query(grain: str, key: str | None, alias: str | None) -> tuple[str, list[Any]]:
    """The SQL selecting the stored rows of one period (`ROW_COLUMNS`, in (key,
    alias) order) and its arguments after `grain` and the period's start."""
    where, args = _where(key, alias)
    sql = (
        f"SELECT {ROW_COLUMNS} FROM usage_rollup WHERE grain = ? AND start = ?{where}"
        " ORDER BY key_id, model"
    )
    return sql, args


def _add(
    out: dict[tuple[int, str, str], Acc], i: int, row: tuple[Any, ...], sign: int, dense: bool
) -> None:
    k = (i, row[1], row[2])
    acc = out.get(k)
    if acc is None:
        acc = out[k] = _new_acc(dense)
    for j in range(8):
        acc[j] += sign * row[3 + j]
    add = hist.add_to_list if dense else hist.add_into
    add(acc[8], row[11], sign)
    add(acc[9], row[12], sign)


def _merge_into(
    out: dict[tuple[int, str, str], Acc], k: tuple[int, str, str], acc: Acc, sign: int, dense: bool
) -> None:
    target = out.get(k)
    if target is None:
        target = out[k] = _new_acc(dense)
    for j in range(8):
        target[j] += sign * acc[j]
    for j in (8, 9):  # `acc` is sparse (a dict); the target either
        counts = target[j]
        if dense:
            for b, c in acc[j].items():
                counts[b] += sign * c
        else:
            for b, c in acc[j].items():
                counts[b] = counts.get(b, 0) + sign * c


def collect(
    conn: sqlite3.Connection,
    grain: str,
    bounds: list[int],
    key: str | None,
    alias: str | None = None,
    dense: bool = True,
) -> dict[tuple[int, str, str], Acc]:
    """Usage per (period index, key, alias) for the periods [bounds[i], bounds[i+1])
    (hour-aligned UTC instants), read from `grain` rows and the hour rows at
    the edges. Groups with no request are left out."""
    anchors = [anchor(b, grain) for b in bounds]
    n = len(bounds) - 1
    out: dict[tuple[int, str, str], Acc] = {}
    for row in rows_between(conn, grain, anchors[0], anchors[-1], key, alias):
        _add(out, bisect_right(anchors, row[0]) - 1, row, 1, dense)
    for i, (b, a) in enumerate(zip(bounds, anchors, strict=True)):
        if b == a:
            continue
        sign = 1 if b < a else -1  # the hours [b, a) belong to period i, not i - 1
        edge: dict[tuple[int, str, str], Acc] = {}
        for row in rows_between(conn, "hour", min(a, b), max(a, b), key, alias):
            _add(edge, 0, row, 1, False)  # each hour row read once, for both periods
        for (_, who, model), acc in edge.items():
            if i < n:
                _merge_into(out, (i, who, model), acc, sign, dense)
            if i > 0:
                _merge_into(out, (i - 1, who, model), acc, -sign, dense)
    return {k: acc for k, acc in out.items() if acc[0] > 0}


def merged(accs: list[Acc]) -> Acc:
    """Dense groups added together (a period's aliases into its total)."""
    if len(accs) == 1:
        return accs[0]
    total = _new_acc()
    for acc in accs:
        for j in range(8):
            total[j] += acc[j]
        for j in (8, 9):
            total[j] = list(map(operator.add, total[j], acc[j]))
    return total


def as_row(acc: Acc) -> dict[str, Any]:
    """A group's sums and its p50/p95 as a usage row's columns."""
    row: dict[str, Any] = dict(zip(SUM_COLUMNS, acc[:8], strict=True))
    row["audio_seconds"] = float(row["audio_seconds"])
    row["cost_usd"] = float(row["cost_usd"])
    quantile = hist.list_quantile if isinstance(acc[8], list) else hist.quantile
    row["latency_ms_p50"] = quantile(acc[8], 0.5)
    row["latency_ms_p95"] = quantile(acc[8], 0.95)
    row["ttft_ms_p50"] = quantile(acc[9], 0.5)
    return row


def window_bounds(window: Window) -> tuple[str, list[int], list[str]]:
    """The stored grain, the boundaries and the period labels of a window."""
    if window.by not in ("day", "week"):
        raise ValueError("by must be 'day' or 'week'")
    zone = ZoneInfo(window.tz)
    labels = periods(window)
    step = timedelta(weeks=1) if window.by == "week" else timedelta(days=1)
    days = [date.fromisoformat(p) for p in labels]
    days.append(days[-1] + step)
    return window.by, [ceil_hour(local_midnight(d, zone)) for d in days], labels


def usage_series(
    conn: sqlite3.Connection, window: Window, key_id: str | None = None
) -> list[dict[str, Any]]:
    """One row per (period, alias) with usage, and one per period with model `*`
    (every alias together), periods as ISO dates (a week: its Monday); of one key,
    or of every key when `key_id` is None."""
    grain, bounds, labels = window_bounds(window)
    groups = collect(conn, grain, bounds, ALL_KEYS if key_id is None else key_id)
    per_period: dict[int, list[tuple[str, Acc]]] = {}
    for (i, _, model), acc in groups.items():
        per_period.setdefault(i, []).append((model, acc))
    rows = []
    for i in sorted(per_period):
        models = sorted(per_period[i])
        for model, acc in [*models, (TOTAL, merged([a for _, a in models]))]:
            rows.append({"period": labels[i], "model": model, **as_row(acc)})
    rows.sort(key=lambda r: (r["period"], r["model"]))
    return rows


def spend_since(conn: sqlite3.Connection, since: float, grain: str) -> dict[str, float]:
    """Each key's spend from `since` (rounded up to the hour) on: the `grain`
    rows from its anchor, corrected by the hour rows in between."""
    b = ceil_hour(since)
    a = anchor(b, grain)
    spend: dict[str, float] = {}
    parts = [(grain, a, 2**62, 1)]
    if b != a:
        parts.append(("hour", min(a, b), max(a, b), 1 if b < a else -1))
    for g, lo, hi, sign in parts:
        for key, cost in conn.execute(
            "SELECT key_id, sum(cost_usd) FROM usage_rollup WHERE grain = ? AND start >= ?"
            f" AND start < ? AND key_id != '{ALL_KEYS}' GROUP BY key_id",
            (g, lo, hi),
        ):
            spend[key] = spend.get(key, 0.0) + sign * cost
    return spend


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


def utc_label(by: str, start: int) -> str:
    """The `period` of a stored row in UTC: the day or Monday, or the hour."""
    if by == "hour":
        return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:00:00Z")
    return (EPOCH + timedelta(days=start // DAY)).isoformat()
