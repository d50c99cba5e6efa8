"""The per-process, in-memory mirror of `api_keys`: what `proxy.auth.bearer` reads.

A dict from sha256(key) to `KeyInfo`, refreshed from SQLite by a background
task whenever `meta.keys_version` moves (polled every `POLL_INTERVAL_S`), so
the request path never touches the database for a known key. A key that is
not in the table makes one shared check of the version before it is refused,
so a key created a moment ago works on its first request.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import aiosqlite

from proxy.auth.keys import SELECT_KEYS, KeyInfo, hash_key, row_to_info

POLL_INTERVAL_S = 0.2


class KeyTable:
    """The per-process, in-memory mirror of `api_keys`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._by_hash: dict[str, KeyInfo] = {}
        self._version = -1
        self._checked_at = 0.0  # monotonic time the latest version check began
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def lookup(self, plain: str) -> KeyInfo | None:
        digest = hash_key(plain)
        info = self._by_hash.get(digest)
        if info is None or not hmac.compare_digest(info.key_hash, digest):
            return None
        return info

    async def lookup_or_refresh(self, plain: str) -> KeyInfo | None:
        """A miss: check the table's version once more, so a key created a moment ago
        works at once. Concurrent misses share one check: a check that began after
        this request asked has seen everything this request could expect to see."""
        info = self.lookup(plain)
        if info is not None:
            return info
        asked = time.monotonic()
        async with self._lock:
            if self._checked_at <= asked:
                await self._refresh_locked(force=False)
        return self.lookup(plain)

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            await self._refresh_locked(force)

    async def _refresh_locked(self, force: bool) -> None:
        self._checked_at = time.monotonic()
        async with self._db.execute("SELECT value FROM meta WHERE name='keys_version'") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if force or version != self._version:
            async with self._db.execute(SELECT_KEYS) as cur:
                rows = await cur.fetchall()
            self._by_hash = {info.key_hash: info for info in map(row_to_info, rows)}
            self._version = version

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a transient lock must not stop the poller
                continue

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
