"""Budget periods (`total`, `monthly`, `daily`, in UTC): their ids, starts and ends.

Used by `proxy.auth.limits` (which spend a settle adds to), `proxy.auth.budgets`
(the spend seeded from SQLite), `proxy.auth.admission` (`Retry-After` of a
spent budget) and `proxy.auth.redis_limits` (the period's key in Redis and
when it expires). `period_ids` runs on every settle, so it keeps the ids of
the current UTC day instead of building a datetime each time.
"""

from __future__ import annotations

from datetime import UTC, datetime

_day_cache: list[int] = [-1, 0]  # the UTC day id last asked for, and its month id


def period_ids(now: float) -> tuple[int, int]:
    """(month id, day id) of a UTC time: year * 12 + month - 1, and days since 1970."""
    day_id = int(now // 86400)
    if day_id != _day_cache[0]:
        day = datetime.fromtimestamp(day_id * 86400, UTC)
        _day_cache[:] = [day_id, day.year * 12 + day.month - 1]
    return _day_cache[1], day_id


def period_start(period: str, now: float) -> float:
    """When the budget period that holds `now` began (0 for `total`)."""
    if period == "daily":
        return now - now % 86400
    if period == "monthly":
        day = datetime.fromtimestamp(now, UTC)
        return datetime(day.year, day.month, 1, tzinfo=UTC).timestamp()
    return 0.0


def period_end(period: str, now: float) -> float | None:
    """When the budget period that holds `now` ends (None for `total`)."""
    if period == "daily":
        return now - now % 86400 + 86400
    if period == "monthly":
        day = datetime.fromtimestamp(now, UTC)
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return datetime(year, month, 1, tzinfo=UTC).timestamp()
    return None


def period_name(period: str, now: float) -> str:
    """A name of the period that holds `now`, for keys in Redis: `total`,
    `m<month id>`, `d<day id>`."""
    if period == "total":
        return "total"
    month_id, day_id = period_ids(now)
    return f"m{month_id}" if period == "monthly" else f"d{day_id}"
