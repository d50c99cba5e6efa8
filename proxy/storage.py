"""The SQLite file that holds keys and usage: schema and connections.

Opened by the CLI (plain `sqlite3`, short-lived) and by each gateway process
(`aiosqlite`, for the key table refresh and the usage batch writer). WAL mode
lets the CLI read usage while gateway workers write it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.usage import rollups

if TYPE_CHECKING:
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
    error         TEXT,
    audio_source  TEXT,
    cached_tokens    INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_id, ts);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""

# Columns added after the first release, with their definitions: a database made
# before them gets them at start (`migrate`), so its rows keep their meaning.
ADDED_COLUMNS = (
    ("requests", "audio_source", "TEXT"),
    ("requests", "cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("requests", "reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
)

# The sidecar's columns (`proxy.usage.ship_queue`), added by `migrate_ship`
# when it first opens the file; the gateway never reads or writes them.
# `ship_seq` is stamped on rows after they landed (live or replayed late from a
# journal), in the sidecar's own transaction, from the `meta.ship_seq`
# counter: monotonic, never reused after pruning, whatever order rows arrive.
SHIP_SCHEMA = """
CREATE TABLE IF NOT EXISTS ship_state (
    sink      TEXT PRIMARY KEY,
    watermark INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('ship_seq', 0);
CREATE INDEX IF NOT EXISTS requests_ship_seq ON requests (ship_seq);
"""


def migrate_ship(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "ship_seq" not in columns:
        try:
            conn.execute("ALTER TABLE requests ADD COLUMN ship_seq INTEGER")
        except sqlite3.OperationalError as exc:  # another sidecar added it meanwhile
            if "duplicate column" not in str(exc):
                raise
    conn.executescript(SHIP_SCHEMA)
    conn.commit()


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
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older database lacks (`ADDED_COLUMNS`), and the usage
    rollups with their trigger (`proxy.usage.rollups`, backfilled once).

    Under `BEGIN IMMEDIATE`, so that workers starting together add each column
    once: the second one waits for the first's commit, then finds it there."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        added = ADDED_COLUMNS + tuple(("api_keys", c, d) for c, d in API_KEY_COLUMNS)
        for table, column, definition in added:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        rollups.install(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


async def connect_async(path: Path) -> aiosqlite.Connection:
    """The gateway process's connection; queries run on aiosqlite's thread."""
    import asyncio  # here: the command line's `usage` and `keys` need neither

    import aiosqlite

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, timeout=5.0)
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    await conn.executescript(SCHEMA)
    await conn.commit()
    await asyncio.to_thread(lambda: connect(path).close())  # `migrate`, on a thread
    return conn
