"""The per-process, in-memory mirror of `api_keys`: what `proxy.auth.bearer` reads.

A dict from sha256(key) to `KeyInfo`, read through the table's own read-only
SQLite connection (never the usage writer's, so a slow batch never delays a
key check) and refreshed whenever `meta.keys_version` moves: a background task
checks the version whenever no check ran for `POLL_INTERVAL_S`, so the request
path never touches the database for a known key.

A key that is not in the mirror may have been created a moment ago, so it
waits for a version check that began after it asked before it is refused
(a new key works on its first request). Those checks are shared and spaced:
all the misses waiting at one time share one check, and a check for misses
starts at most `MISS_RECHECK_S` after the previous check, so a flood of
distinct made-up keys costs at most one SQLite round trip per
`MISS_RECHECK_S`, however many keys it sends. A key refused since the last
change of the table is remembered (a negative cache of at most
`UNKNOWN_CACHE_MAX` digests, emptied whenever the version moves) and refused
from memory at once.

`PROMETHEUS_DEBUG_KEY_TABLE_TRACE=FILE` appends each statement the table runs
to FILE (a `time.monotonic()` stamp, then the SQL): a debug aid, and how the
tests count the table's SQLite round trips.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from proxy import storage
from proxy.auth.keys import SELECT_KEYS, KeyInfo, row_to_infos
from proxy.background import stop_task
from proxy.observability.logs import get_logger

POLL_INTERVAL_S = 0.2
MISS_RECHECK_S = 0.1
UNKNOWN_CACHE_MAX = 4096
TRACE_ENV = "PROMETHEUS_DEBUG_KEY_TABLE_TRACE"
VERSION_SQL = "SELECT value FROM meta WHERE name='keys_version'"

_MIN_POLL_SLEEP_S = 0.005


class KeyTable:
    """The per-process, in-memory mirror of `api_keys`; owns its connection."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._by_hash: dict[str, KeyInfo] = {}
        self._unknown: dict[str, None] = {}  # digests refused at `_version`, oldest first
        self._version = -1
        self._checked_at = -float("inf")  # monotonic time the latest version check began
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db_path: Path) -> KeyTable:
        """A table on a connection of its own to the SQLite file, which it only reads."""
        db = await storage.connect_async(db_path)
        await db.execute("PRAGMA query_only=ON")
        trace = os.environ.get(TRACE_ENV)
        if trace:
            await db.set_trace_callback(_trace_to(Path(trace)))
        return cls(db)

    def find(self, digest: str) -> KeyInfo | None:
        """The key with this sha256 in the mirror, if any (no I/O)."""
        info = self._by_hash.get(digest)
        if info is None or not hmac.compare_digest(info.key_hash, digest):
            return None
        return info

    async def find_or_recheck(self, digest: str) -> KeyInfo | None:
        """A miss: refused from memory if refused since the table last changed,
        else found or refused after a version check that began after this call."""
        info = self.find(digest)
        if info is not None or digest in self._unknown:
            return info
        try:
            await self._recheck(asked=time.monotonic(), min_gap=MISS_RECHECK_S)
        except Exception as exc:  # noqa: BLE001 - the database is away: refuse, remember nothing
            get_logger().warning("key_table_check_failed", error=type(exc).__name__)
            return self.find(digest)
        # no await since the check: the mirror and `_unknown` belong to one version
        info = self.find(digest)
        if info is None:
            if len(self._unknown) >= UNKNOWN_CACHE_MAX:
                del self._unknown[next(iter(self._unknown))]
            self._unknown[digest] = None
        return info

    async def refresh(self, force: bool = False) -> None:
        """Check the version now (the admin API, after it changed the table)."""
        async with self._lock:
            await self._refresh_locked(force)

    async def _recheck(self, asked: float, min_gap: float) -> None:
        """Make sure a version check began after `asked`, starting one no sooner
        than `min_gap` after the previous one; callers waiting meanwhile share it."""
        async with self._lock:
            if self._checked_at > asked:
                return
            wait = self._checked_at + min_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._refresh_locked(force=False)

    async def _refresh_locked(self, force: bool) -> None:
        self._checked_at = time.monotonic()
        async with self._db.execute(VERSION_SQL) as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if force or version != self._version:
            async with self._db.execute(SELECT_KEYS) as cur:
                rows = await cur.fetchall()
            self._by_hash = {info.key_hash: info for row in rows for info in row_to_infos(row)}
            self._unknown = {}
            self._version = version

    async def _poll(self) -> None:
        while True:
            due = self._checked_at + POLL_INTERVAL_S
            await asyncio.sleep(max(due - time.monotonic(), _MIN_POLL_SLEEP_S))
            try:  # only when no check (a miss's included) began in the last interval
                await self._recheck(asked=time.monotonic() - POLL_INTERVAL_S, min_gap=0.0)
            except Exception:  # noqa: BLE001 - a transient lock must not stop the poller
                continue

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        await stop_task(self._task)
        await self._db.close()


def _trace_to(path: Path) -> Callable[[str], None]:
    """A trace callback appending each statement to `path` (on aiosqlite's thread)."""
    out = path.open("a", buffering=1)

    def trace(statement: str) -> None:
        out.write(f"{time.monotonic():.6f} {' '.join(statement.split())}\n")

    return trace
