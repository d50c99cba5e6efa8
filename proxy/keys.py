"""API keys: minting, hashing, the SQLite table and the in-memory lookup.

The CLI and the admin API call `create_key`/`revoke_key`/`list_keys`, which
write the `api_keys` table and bump `meta.keys_version`. Each gateway process
holds a `KeyTable`: a dict from sha256(key) to `KeyInfo`, refreshed from SQLite
by a background task whenever `keys_version` moves (polled every 200 ms), so
the request path never touches the database. A key that is not in the table
triggers one shared, rate-limited refresh before it is refused, so a key
created a moment ago works on its first request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

KEY_PREFIX = "prom_sk_"
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str
    key_hash: str
    revoked: bool
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    models: frozenset[str] | None = None

    def allows(self, alias: str) -> bool:
        return self.models is None or alias in self.models


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def new_plain_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _row_to_info(row: tuple[Any, ...]) -> KeyInfo:
    kid, name, key_hash, revoked_at, rpm, tpm, budget, models = row
    return KeyInfo(
        id=kid,
        name=name,
        key_hash=key_hash,
        revoked=revoked_at is not None,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        models=frozenset(m for m in models.split(",") if m) if models else None,
    )


_SELECT = "SELECT id, name, key_hash, revoked_at, rpm, tpm, budget_usd, models FROM api_keys"


def create_key(
    conn: sqlite3.Connection,
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    budget_usd: float | None = None,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """Store a new key (hashed) and return the only copy of the plain key."""
    plain = new_plain_key()
    kid = "key_" + secrets.token_hex(8)
    with conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at, rpm, tpm,"
            " budget_usd, models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kid,
                name,
                hash_key(plain),
                plain[: len(KEY_PREFIX) + 4],
                time.time(),
                rpm,
                tpm,
                budget_usd,
                ",".join(models) if models else None,
            ),
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
    return {"id": kid, "key": plain, "name": name}


def revoke_key(conn: sqlite3.Connection, key_id: str) -> bool:
    with conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
    return cur.rowcount > 0


def list_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, name, key_prefix, created_at, revoked_at, rpm, tpm, budget_usd, models"
        " FROM api_keys ORDER BY created_at"
    ).fetchall()
    return [
        {
            "id": r[0],
            "name": r[1],
            "key_prefix": r[2],
            "created_at": r[3],
            "revoked": r[4] is not None,
            "revoked_at": r[4],
            "rpm": r[5],
            "tpm": r[6],
            "budget_usd": r[7],
            "models": r[8].split(",") if r[8] else None,
        }
        for r in rows
    ]


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
            async with self._db.execute(_SELECT) as cur:
                rows = await cur.fetchall()
            self._by_hash = {info.key_hash: info for info in map(_row_to_info, rows)}
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
