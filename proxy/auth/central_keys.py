"""Cluster key sync: the node's SQLite `api_keys` kept in step with the
cluster's `api_keys` table in PostgreSQL (`[cluster] postgres_dsn`).

Runs in the sidecar (`prometheus-gateway ship`), not in the gateway workers:
one PostgreSQL connection per node, however many workers, and the request
path never waits on it. Each worker's key mirror (`proxy.auth.key_table`)
already follows `meta.keys_version` in the local file, so the sync only has
to write SQLite and bump that version.

Every `POLL_S` it does two things:
- push: when the local `meta.keys_version` moved (a key created or revoked
  on this node with the CLI or the admin API), local keys PostgreSQL does not
  have, or has unrevoked, are written there;
- pull: keys whose `version` in PostgreSQL is past the last one seen are
  written into SQLite, and `meta.keys_version` is bumped.

A version poll rather than LISTEN/NOTIFY: a notification sent while the
listening connection is down is lost, so a poll would be needed to catch up
anyway; one indexed query per node every half second is cheap, and it puts a
plain bound on the delay (a key works on every node within about 1 s: the
push, the pull and the workers' 200 ms refresh). Writers take a
`SHARE ROW EXCLUSIVE` lock on the table, so versions commit in order and
"past the last seen" never skips a row committed late. Revocation is sticky:
once revoked anywhere, a key stays revoked everywhere.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from proxy import storage
from proxy.observability.logs import get_logger
from proxy.usage.sinks.pg_schema import migrate

POLL_S = 0.5
RECONNECT_S = 2.0
COLUMNS = (
    "id",
    "name",
    "key_hash",
    "key_prefix",
    "created_at",
    "revoked_at",
    "rpm",
    "tpm",
    "budget_usd",
    "models",
)
_NAMES = ", ".join(COLUMNS)
PG_UPSERT = (
    f"INSERT INTO api_keys ({_NAMES}) VALUES ({', '.join(f'${i + 1}' for i in range(10))})"
    " ON CONFLICT (id) DO UPDATE SET revoked_at = EXCLUDED.revoked_at,"
    " version = nextval('api_keys_version')"
    " WHERE api_keys.revoked_at IS NULL AND EXCLUDED.revoked_at IS NOT NULL"
)
LOCAL_UPSERT = (
    f"INSERT INTO api_keys ({_NAMES}) VALUES ({', '.join('?' * 10)})"
    " ON CONFLICT (id) DO UPDATE SET revoked_at = excluded.revoked_at"
    " WHERE api_keys.revoked_at IS NULL AND excluded.revoked_at IS NOT NULL"
)
VERSION_SQL = "SELECT value FROM meta WHERE name = 'keys_version'"

KeyRow = tuple[Any, ...]


def _local_version(db_path: Path) -> int:
    conn = storage.connect(db_path)
    try:
        return int(conn.execute(VERSION_SQL).fetchone()[0])
    finally:
        conn.close()


def _local_keys(db_path: Path) -> tuple[int, list[KeyRow]]:
    conn = storage.connect(db_path)
    try:
        with conn:  # one snapshot: the version and the rows it counts
            version = int(conn.execute(VERSION_SQL).fetchone()[0])
            rows = conn.execute(f"SELECT {_NAMES} FROM api_keys").fetchall()
        return version, rows
    finally:
        conn.close()


def _write_local(db_path: Path, rows: list[KeyRow]) -> int:
    """Upsert rows into the local table; bump the version when any changed.
    The local version after."""
    conn = storage.connect(db_path)
    try:
        with conn:
            changed = 0
            for row in rows:
                changed += conn.execute(LOCAL_UPSERT, row).rowcount
            if changed:
                conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
            return int(conn.execute(VERSION_SQL).fetchone()[0])
    except sqlite3.IntegrityError as exc:  # a hash held by another id: never by chance
        get_logger().error("cluster_keys_conflict", error=str(exc))
        return -1
    finally:
        conn.close()


class KeySync:
    def __init__(self, dsn: str, db_path: Path) -> None:
        self._dsn = dsn
        self._db = db_path
        self._central: dict[str, bool] = {}  # id -> revoked, as PostgreSQL has it
        self._pulled = 0  # highest PostgreSQL version written locally
        self._local_seen = -1  # local keys_version last pushed from
        self._log = get_logger()

    async def run(self) -> None:
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                await migrate(conn)
                if failing:
                    self._log.info("cluster_keys_recovered")
                    failing = False
                while True:
                    await self.sync_once(conn)
                    await asyncio.sleep(POLL_S)
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                TimeoutError,
                sqlite3.Error,  # the local file busy: try again
            ) as exc:
                if not failing:
                    self._log.warning("cluster_keys_failed", error=f"{type(exc).__name__}: {exc}")
                failing = True
                self._local_seen = -1  # push again after reconnecting: a write may be lost
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(RECONNECT_S)

    async def run_once(self) -> bool:
        """One sync (`ship --once`); False if PostgreSQL could not be reached."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            self._log.warning("cluster_keys_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        try:
            await migrate(conn)
            await self.sync_once(conn)
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._log.warning("cluster_keys_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        finally:
            await conn.close()

    async def sync_once(self, conn: asyncpg.Connection) -> None:
        await self._pull(conn)  # first: what PostgreSQL has is not pushed back
        version = await asyncio.to_thread(_local_version, self._db)
        if version != self._local_seen:
            await self._push(conn)

    async def _push(self, conn: asyncpg.Connection) -> None:
        version, rows = await asyncio.to_thread(_local_keys, self._db)
        todo = [
            r
            for r in rows
            if r[0] not in self._central or (r[5] is not None and not self._central[r[0]])
        ]
        if todo:
            async with conn.transaction():
                await conn.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
                await conn.executemany(PG_UPSERT, todo)
            self._log.info("cluster_keys_pushed", keys=len(todo))
            await self._pull(conn)
        self._local_seen = version

    async def _pull(self, conn: asyncpg.Connection) -> None:
        records = await conn.fetch(
            f"SELECT {_NAMES}, version FROM api_keys WHERE version > $1 ORDER BY version",
            self._pulled,
        )
        if not records:
            return
        rows = [tuple(r[c] for c in COLUMNS) for r in records]
        local_version = await asyncio.to_thread(_write_local, self._db, rows)
        for row in rows:
            self._central[row[0]] = row[5] is not None
        self._pulled = int(records[-1]["version"])
        if local_version >= 0 and self._local_seen == local_version - 1:
            self._local_seen = local_version  # our own bump: nothing new to push
