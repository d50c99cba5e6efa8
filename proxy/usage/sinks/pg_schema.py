"""The central ledger's schema in PostgreSQL, created and upgraded by the
migrations the sidecar runs at start (`migrate`).

`usage_requests` holds one row per request of every node, keyed by
`node_id:request_id`; `usage_daily` is the per (key, alias, UTC day) rollup,
updated in the same statement as the rows it counts
(`proxy.usage.sinks.postgres`). `api_keys` is the cluster's key table
(`proxy.auth.central_keys`). Migrations are numbered, applied once each,
under an advisory lock so two sidecars starting together do not race.
"""

from __future__ import annotations

import asyncpg

MIGRATION_LOCK = 0x70726F6D  # pg_advisory_xact_lock key: "prom"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE usage_requests (
        id               text PRIMARY KEY,
        node_id          text NOT NULL,
        request_id       text NOT NULL,
        ts               double precision NOT NULL,
        key_id           text NOT NULL,
        model            text NOT NULL,
        deployment       text NOT NULL,
        endpoint         text NOT NULL,
        status           integer NOT NULL,
        stream           integer NOT NULL,
        input_tokens     bigint NOT NULL,
        output_tokens    bigint NOT NULL,
        cached_tokens    bigint,
        reasoning_tokens bigint,
        audio_seconds    double precision NOT NULL,
        audio_source     text,
        cost_usd         double precision NOT NULL,
        latency_ms       double precision NOT NULL,
        ttft_ms          double precision,
        usage_source     text NOT NULL,
        error            text,
        shipped_at       timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX usage_requests_key_ts ON usage_requests (key_id, ts);
    CREATE INDEX usage_requests_ts ON usage_requests (ts);
    CREATE TABLE usage_daily (
        key_id        text NOT NULL,
        model         text NOT NULL,
        day           date NOT NULL,
        requests      bigint NOT NULL,
        errors        bigint NOT NULL,
        input_tokens  bigint NOT NULL,
        output_tokens bigint NOT NULL,
        audio_seconds double precision NOT NULL,
        cost_usd      double precision NOT NULL,
        PRIMARY KEY (key_id, model, day)
    );
    """,
    """
    CREATE SEQUENCE api_keys_version;
    CREATE TABLE api_keys (
        id          text PRIMARY KEY,
        name        text NOT NULL,
        key_hash    text NOT NULL UNIQUE,
        key_prefix  text NOT NULL,
        created_at  double precision NOT NULL,
        revoked_at  double precision,
        rpm         integer,
        tpm         integer,
        budget_usd  double precision,
        models      text,
        version     bigint NOT NULL DEFAULT nextval('api_keys_version')
    );
    CREATE INDEX api_keys_by_version ON api_keys (version);
    """,
)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the migrations not applied yet; the schema's version after."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS prometheus_migrations"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM prometheus_migrations")
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version <= done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO prometheus_migrations (version) VALUES ($1)", version)
    return len(MIGRATIONS)
