"""The PostgreSQL sink: the central ledger (`[ship] postgres_dsn`).

One batch is one statement, so one transaction: the rows go into
`usage_requests` with `ON CONFLICT (id) DO NOTHING`, and only the rows that
were new are added to the `usage_daily` rollup. A batch sent again (the
sidecar killed before it stored its watermark, a connection cut after the
commit) inserts nothing and adds nothing: every row is counted exactly once.
"""

from __future__ import annotations

import asyncpg
import orjson

from proxy.usage.sinks import Row, SinkError
from proxy.usage.sinks.pg_schema import migrate

# name, PostgreSQL type; the order of the INSERT
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("node_id", "text"),
    ("request_id", "text"),
    ("ts", "double precision"),
    ("key_id", "text"),
    ("model", "text"),
    ("deployment", "text"),
    ("endpoint", "text"),
    ("status", "integer"),
    ("stream", "integer"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("cached_tokens", "bigint"),
    ("reasoning_tokens", "bigint"),
    ("audio_seconds", "double precision"),
    ("audio_source", "text"),
    ("cost_usd", "double precision"),
    ("latency_ms", "double precision"),
    ("ttft_ms", "double precision"),
    ("usage_source", "text"),
    ("error", "text"),
)
_NAMES = ", ".join(name for name, _ in COLUMNS)
_TYPED = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
_SUMMED = ("requests", "errors", "input_tokens", "output_tokens", "audio_seconds", "cost_usd")

INSERT_BATCH = f"""
WITH ins AS (
    INSERT INTO usage_requests ({_NAMES})
    SELECT {_NAMES} FROM jsonb_to_recordset($1::jsonb) AS x({_TYPED})
    ON CONFLICT (id) DO NOTHING
    RETURNING key_id, model, ts, status, input_tokens, output_tokens, audio_seconds, cost_usd
)
INSERT INTO usage_daily AS d
    (key_id, model, day, requests, errors, input_tokens, output_tokens, audio_seconds, cost_usd)
SELECT key_id, model, (to_timestamp(ts) AT TIME ZONE 'UTC')::date, count(*),
       count(*) FILTER (WHERE status >= 400), sum(input_tokens), sum(output_tokens),
       sum(audio_seconds), sum(cost_usd)
FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (key_id, model, day) DO UPDATE SET
    {", ".join(f"{c} = d.{c} + EXCLUDED.{c}" for c in _SUMMED)}
"""


def _clean(value: object) -> object:
    # PostgreSQL's text and jsonb cannot hold NUL; nothing else in a row is refused
    return value.replace("\x00", "") if isinstance(value, str) else value


def batch_json(rows: list[Row]) -> str:
    wanted = [name for name, _ in COLUMNS]
    return orjson.dumps([{c: _clean(row.get(c)) for c in wanted} for row in rows]).decode()


class PostgresSink:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self._dsn, timeout=10)
            try:
                await migrate(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def ready(self) -> None:
        await self.send([])

    async def send(self, rows: list[Row]) -> None:
        try:
            conn = await self._connection()
            if rows:
                await conn.execute(INSERT_BATCH, batch_json(rows), timeout=60)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self._drop()
            raise SinkError(f"postgres: {type(exc).__name__}: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
