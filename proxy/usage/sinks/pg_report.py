"""`usage --central`: the same rows as `proxy.usage.report`, read from the
central ledger in PostgreSQL, so they cover every node of the cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from proxy.usage.sinks.pg_schema import migrate

LEDGER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
"""What reading the ledger raises when PostgreSQL is down or refuses."""

_DAY = "(to_timestamp(r.ts) AT TIME ZONE 'UTC')::date"
PERIODS = {"day": _DAY, "week": f"date_trunc('week', {_DAY})::date"}


def _sql(by: str, with_key: bool) -> str:
    return f"""
    SELECT r.key_id, k.name AS key_name, r.model, to_char({PERIODS[by]}, 'YYYY-MM-DD') AS period,
           count(*) AS requests, count(*) FILTER (WHERE r.status >= 400) AS errors,
           sum(r.input_tokens)::bigint AS input_tokens,
           sum(r.output_tokens)::bigint AS output_tokens,
           sum(r.audio_seconds) AS audio_seconds, sum(r.cost_usd) AS cost_usd,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms) AS latency_ms_p50,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.ttft_ms) AS ttft_ms_p50
    FROM usage_requests r LEFT JOIN api_keys k ON k.id = r.key_id
    {"WHERE r.key_id = $1" if with_key else ""}
    GROUP BY 1, 2, 3, 4 ORDER BY 4, 1, 3
    """


async def central_usage(dsn: str, key_id: str | None, by: str) -> list[dict[str, Any]]:
    """The usage rows of the whole cluster (`GET /admin/usage?central=1`)."""
    if by not in PERIODS:
        raise ValueError("by must be 'day' or 'week'")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await migrate(conn)
        records = await conn.fetch(_sql(by, bool(key_id)), *([key_id] if key_id else []))
    finally:
        await conn.close()
    rows = []
    for rec in records:
        row = dict(rec)
        for name in ("latency_ms_p50", "ttft_ms_p50"):
            row[name] = None if row[name] is None else round(row[name], 3)
        rows.append(row)
    return rows


def query_central_usage(
    dsn: str, key_id: str | None = None, by: str = "day"
) -> list[dict[str, Any]]:
    if by not in PERIODS:
        raise ValueError("by must be 'day' or 'week'")
    return asyncio.run(central_usage(dsn, key_id, by))
