"""Usage rows per (key, alias, hour, day or week), read from the rollups.

Used by `prometheus-gateway usage`, `GET /admin/usage` (filters: key, alias,
from/to, tz) and `GET /v1/usage` (the caller's own key only); all return the
same rows (CONTRACT.md: key_id, model, period, requests, input_tokens,
output_tokens, audio_seconds, cost_usd, latency_ms_p50, ttft_ms_p50, and
here also key_name, errors, cached_tokens, reasoning_tokens and
latency_ms_p95). Nothing here reads `requests`: the rows come from
`usage_rollup` (`proxy.usage.rollups`).

In UTC, with `from`/`to` on the period's boundaries (or absent), each row is
one stored row, read a period at a time, its p50s from the stored
`quantiles` (no histogram decoded): what keeps `usage --by week` over a year
of 1,000 keys (~370k rows) near a second.
In another timezone, or with `from`/`to` inside a period, the periods are
assembled from day or week rows and the hour rows at their edges
(`proxy.usage.rollup_query.collect`). `from`/`to` select whole hours: a
request counts when its UTC hour starts at or after `from` and before `to`.
Latency and TTFT p50 are the nearest-rank value's histogram bucket (its
geometric middle, within about 4.4% of the value; `proxy.usage.hist`).
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from _fastpath._usage_py import row_dicts  # not _fastpath.usage: workers never print
from proxy.usage import hist
from proxy.usage.rollup_query import (
    anchor,
    as_row,
    ceil_hour,
    collect,
    local_midnight,
    period_query,
    stored_starts,
    utc_label,
)
from proxy.usage.rollups import ALL_KEYS, HOUR

PERIODS = ("hour", "day", "week")
_FAR = 2**62
_SHOWN_OR_NONE = (*hist.SHOWN, None)  # index NO_QUANTILE: an empty histogram


def query_usage(
    conn: sqlite3.Connection,
    key_id: str | None = None,
    by: str = "day",
    *,
    alias: str | None = None,
    since: float | None = None,
    until: float | None = None,
    tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Rows of one key (or all), one alias (or all), of the hours that start at
    `since` or later and before `until` (seconds since the epoch), per local
    day or ISO week in `tz` (hours are always UTC), ordered by period, key
    and alias."""
    out: list[dict[str, Any]] = []
    with no_gc():
        for chunk in usage_chunks(conn, key_id, by, alias=alias, since=since, until=until, tz=tz):
            out += chunk
    return out


def usage_chunks(
    conn: sqlite3.Connection,
    key_id: str | None = None,
    by: str = "day",
    *,
    alias: str | None = None,
    since: float | None = None,
    until: float | None = None,
    tz: str = "UTC",
) -> Iterator[list[dict[str, Any]]]:
    """`query_usage`'s rows in order, a period at a time (in UTC; elsewhere all
    at once): what `usage --json` writes out as it reads, so that a year of
    every key is never all in memory. ValueError (at once) for a bad `by`."""
    return plan_chunks(
        conn, plan_report(conn, key_id, by, alias=alias, since=since, until=until, tz=tz)
    )


def plan_chunks(conn: sqlite3.Connection, plan: ReportPlan) -> Iterator[list[dict[str, Any]]]:
    """`usage_chunks` of a plan already made."""
    if plan.periods is not None:
        return _stored_chunks(conn, plan)
    return iter([_assembled_rows(conn, plan)])


@dataclass
class ReportPlan:
    """What a report reads. `periods`: where each row is one stored row (UTC,
    `from`/`to` on the periods' boundaries, or by hour), each period's start
    and label, read by `sql` with the arguments (grain, start, *args);
    None where the periods are assembled (`_assembled_rows`)."""

    by: str
    key: str | None
    alias: str | None
    tz: str
    lo: int
    hi: int
    names: dict[str, str]
    sql: str
    args: list[Any]
    periods: list[tuple[int, str]] | None


def plan_report(
    conn: sqlite3.Connection,
    key_id: str | None = None,
    by: str = "day",
    *,
    alias: str | None = None,
    since: float | None = None,
    until: float | None = None,
    tz: str = "UTC",
) -> ReportPlan:
    """How `usage_chunks` reads its rows. ValueError for a bad `by`."""
    if by not in PERIODS:
        raise ValueError("by must be 'hour', 'day' or 'week'")
    key = key_id or None
    lo = 0 if since is None else ceil_hour(since)
    hi = _FAR if until is None else ceil_hour(until)
    names = dict(conn.execute("SELECT id, name FROM api_keys").fetchall())
    sql, args = period_query(by, key, alias)
    plan = ReportPlan(by, key, alias, tz, lo, hi, names, sql, args, None)
    edges = [t for t, given in ((lo, since), (hi, until)) if given is not None]
    if key == ALL_KEYS:
        plan.periods = []  # not a key: the every-key rows are the dashboard's
    elif by == "hour" or (tz == "UTC" and all(anchor(t, by) == t for t in edges)):
        starts = stored_starts(conn, by, lo, hi, key, alias)
        plan.periods = [(start, utc_label(by, start)) for start in starts]
    return plan


def _stored_chunks(conn: sqlite3.Connection, plan: ReportPlan) -> Iterator[list[dict[str, Any]]]:
    """One stored row per report row, read a period at a time (so no row
    carries its start: one column fewer of the ~370k a year of weeks has)."""
    for start, period in plan.periods or ():
        rows = conn.execute(plan.sql, [plan.by, start, *plan.args])
        yield row_dicts(rows, period, plan.names, _SHOWN_OR_NONE)


@contextmanager
def no_gc() -> Iterator[None]:
    """Hundreds of thousands of rows are built at once and all kept: the cyclic
    collector would walk them again and again (a third of the time) and find
    no cycle. Off meanwhile, if it was on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _local_periods(lo: int, hi: int, by: str, zone: ZoneInfo) -> tuple[list[int], list[str]]:
    """Boundaries from `lo` to `hi` at each local midnight (or Monday) between,
    and each period's label: the local date (or Monday) it lies in."""
    day = datetime.fromtimestamp(lo, zone).date()
    if by == "week":
        day -= timedelta(days=day.weekday())
    step = timedelta(weeks=1) if by == "week" else timedelta(days=1)
    bounds, labels = [lo], [day.isoformat()]
    while True:
        day += step
        b = ceil_hour(local_midnight(day, zone))
        if b >= hi:
            break
        bounds.append(b)
        labels.append(day.isoformat())
    bounds.append(hi)
    return bounds, labels


def _assembled_rows(conn: sqlite3.Connection, plan: ReportPlan) -> list[dict[str, Any]]:
    by, lo, hi, key, alias, names = plan.by, plan.lo, plan.hi, plan.key, plan.alias, plan.names
    zone = ZoneInfo(plan.tz)
    where, args = (" AND key_id = ?", [key]) if key else (f" AND key_id != '{ALL_KEYS}'", [])
    first, last = conn.execute(
        f"SELECT min(start), max(start) FROM usage_rollup WHERE grain = 'hour'{where}"
        " AND start >= ? AND start < ?",
        [*args, lo, hi],
    ).fetchone()
    if first is None:
        return []
    lo, hi = max(lo, first), min(hi, last + HOUR)
    bounds, labels = _local_periods(lo, hi, by, zone)
    groups = collect(conn, by, bounds, key, alias, dense=key is not None)
    out = []
    for (i, kid, model), acc in sorted(groups.items(), key=lambda g: (labels[g[0][0]], *g[0][1:])):
        head = {"key_id": kid, "key_name": names.get(kid), "model": model, "period": labels[i]}
        out.append({**head, **as_row(acc)})
    return out


def known_zone(tz: str) -> bool:
    """Whether `tz` names an IANA timezone this machine knows."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


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
