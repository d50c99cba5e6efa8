"""The SQLite file that holds keys and usage: schema and connections.

Opened by the CLI (plain `sqlite3`, short-lived) and by each gateway process
(`aiosqlite`, for the key table refresh and the usage batch writer). WAL mode
lets the CLI read usage while gateway workers write it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('keys_version', 0);
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    revoked_at  REAL,
    rpm         INTEGER,
    tpm         INTEGER,
    budget_usd  REAL,
    models      TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    request_id    TEXT PRIMARY KEY,
    ts            REAL NOT NULL,
    key_id        TEXT NOT NULL,
    model         TEXT NOT NULL,
    deployment    TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    status        INTEGER NOT NULL,
    stream        INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    audio_seconds REAL NOT NULL,
    cost_usd      REAL NOT NULL,
    latency_ms    REAL NOT NULL,
    ttft_ms       REAL,
    usage_source  TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_id, ts);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""

# Columns `api_keys` gained after its first release: added to an existing file
# at connect time (ALTER TABLE ADD COLUMN when missing), so an old database
# keeps working and keeps its keys.
API_KEY_COLUMNS = (
    ("expires_at", "REAL"),  # seconds since the epoch; NULL: never
    ("budget_period", "TEXT"),  # total | monthly | daily; NULL: total
    ("prev_key_hash", "TEXT"),  # the secret before the last rotation...
    ("prev_valid_until", "REAL"),  # ...valid until this time (the grace)
    ("rotated_at", "REAL"),
)

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=5000")


def connect(path: Path) -> sqlite3.Connection:
    """A short-lived synchronous connection (CLI, start-up replay)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.executescript(SCHEMA)
    conn.commit()
    for statement in _missing_key_columns([r[1] for r in conn.execute(_KEY_COLUMNS_SQL)]):
        _add_column(conn, statement)
    return conn


_KEY_COLUMNS_SQL = "PRAGMA table_info(api_keys)"


def _missing_key_columns(present: list[str]) -> list[str]:
    return [
        f"ALTER TABLE api_keys ADD COLUMN {name} {kind}"
        for name, kind in API_KEY_COLUMNS
        if name not in present
    ]


def _add_column(conn: sqlite3.Connection, statement: str) -> None:
    try:
        with conn:
            conn.execute(statement)
    except sqlite3.OperationalError as exc:  # another process added it first
        if "duplicate column" not in str(exc):
            raise


async def connect_async(path: Path) -> aiosqlite.Connection:
    """The gateway process's connection; queries run on aiosqlite's thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, timeout=5.0)
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    await conn.executescript(SCHEMA)
    await conn.commit()
    async with conn.execute(_KEY_COLUMNS_SQL) as cur:
        present = [r[1] for r in await cur.fetchall()]
    for statement in _missing_key_columns(present):
        try:
            await conn.execute(statement)
            await conn.commit()
        except sqlite3.OperationalError as exc:  # another worker added it first
            if "duplicate column" not in str(exc):
                raise
    return conn
