"""API keys at rest: minting, hashing, and the `api_keys` table.

The CLI and the admin API call `create_key`/`update_key`/`rotate_key`/
`revoke_key`/`list_keys`/`get_key`, which write the table and bump
`meta.keys_version`; each gateway process's `proxy.auth.key_table.KeyTable`
notices the bump and reloads its mirror.
Only the sha256 of a key is stored; the plain key is returned once, and never
logged: `mask_keys` blanks anything key-shaped out of text that is logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.auth.key_params import check_grace, check_settings, check_update

KEY_PREFIX = "prom_sk_"
# what `new_plain_key` mints: the prefix and 43 url-safe characters (CONTRACT.md:
# "at least 32"); a token of any other shape cannot be a key
_KEY_SHAPE = re.compile(r"prom_sk_[A-Za-z0-9_-]{32,256}")
_KEY_LIKE = re.compile(r"prom_sk_[A-Za-z0-9_-]+")


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
    budget_period: str = "total"
    expires_at: float | None = None
    valid_until: float | None = None  # a rotated-out secret: valid until the grace ends

    def allows(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    @property
    def limited(self) -> bool:
        """Has a request or token rate limit (its replies carry x-ratelimit-*)."""
        return self.rpm is not None or self.tpm is not None


def hash_key(plain: str) -> str:
    # a header's bytes that are not UTF-8 reach us as lone surrogates: hash them
    # too (they match nothing) rather than raise
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def key_digest(token: str) -> str | None:
    """The sha256 of a bearer token shaped like a key; None for any other token,
    which no key can match."""
    if _KEY_SHAPE.fullmatch(token) is None:
        return None
    return hash_key(token)


def looks_like_key(text: str) -> bool:
    return text.startswith(KEY_PREFIX)


def mask_keys(text: str) -> str:
    """`text` with every key-shaped run reduced to the prefix, for log lines."""
    if KEY_PREFIX not in text:
        return text
    return _KEY_LIKE.sub(KEY_PREFIX + "...", text)


def new_plain_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def row_to_infos(row: Sequence[Any]) -> list[KeyInfo]:
    """A row of `SELECT_KEYS` as the secrets it accepts: the current one and,
    during a rotation's grace, the previous one (same key id, same limits)."""
    kid, name, key_hash, revoked_at, rpm, tpm, budget, models = row[:8]
    expires_at, period, prev_hash, prev_until = row[8:12]
    info = KeyInfo(
        id=kid,
        name=name,
        key_hash=key_hash,
        revoked=revoked_at is not None,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        models=frozenset(m for m in models.split(",") if m) if models else None,
        budget_period=period or "total",
        expires_at=expires_at,
    )
    if prev_hash and prev_until is not None and prev_until > time.time():
        return [info, replace(info, key_hash=prev_hash, valid_until=prev_until)]
    return [info]


SELECT_KEYS = (
    "SELECT id, name, key_hash, revoked_at, rpm, tpm, budget_usd, models, expires_at,"
    " budget_period, prev_key_hash, prev_valid_until FROM api_keys"
)


def create_key(
    conn: sqlite3.Connection,
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    budget_usd: float | None = None,
    models: list[str] | None = None,
    budget_period: str | None = None,
    expires_at: float | str | None = None,
) -> dict[str, Any]:
    """Store a new key (hashed) and return the only copy of the plain key.

    The settings are checked (`proxy.auth.key_params`) before anything is written:
    `KeyParamError` names the one refused."""
    key = check_settings(
        {
            "name": name,
            "rpm": rpm,
            "tpm": tpm,
            "budget_usd": budget_usd,
            "models": models,
            "budget_period": budget_period,
            "expires_at": expires_at,
        }
    )
    plain = new_plain_key()
    kid = "key_" + secrets.token_hex(8)
    with conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at, rpm, tpm,"
            " budget_usd, models, budget_period, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kid,
                key.name,
                hash_key(plain),
                plain[: len(KEY_PREFIX) + 4],
                time.time(),
                key.rpm,
                key.tpm,
                key.budget_usd,
                ",".join(key.models) if key.models is not None else None,
                key.budget_period,
                key.expires_at,
            ),
        )
        _bump(conn)
    return {"id": kid, "key": plain, "name": key.name}


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")


def update_key(
    conn: sqlite3.Connection, key_id: str, changes: dict[str, object]
) -> dict[str, Any] | None:
    """Change some settings of a key (`check_update` refuses bad ones first);
    the key as `get_key` shows it, or None for no such key."""
    columns = check_update(changes)
    with conn:
        if columns:
            sets = ", ".join(f"{name} = ?" for name in columns)
            cur = conn.execute(
                f"UPDATE api_keys SET {sets} WHERE id = ?", (*columns.values(), key_id)
            )
            if cur.rowcount == 0:
                return None
            _bump(conn)
    return get_key(conn, key_id)


def rotate_key(conn: sqlite3.Connection, key_id: str, grace_s: object = 0) -> dict[str, Any] | None:
    """A new secret under the same key id (its usage stays one history); the old
    one stays valid for `grace_s` seconds. None for no active key with that id."""
    grace = check_grace(grace_s)
    plain = new_plain_key()
    now = time.time()
    with conn:
        cur = conn.execute(
            "UPDATE api_keys SET prev_key_hash = key_hash, prev_valid_until = ?,"
            " key_hash = ?, key_prefix = ?, rotated_at = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (now + grace, hash_key(plain), plain[: len(KEY_PREFIX) + 4], now, key_id),
        )
        if cur.rowcount == 0:
            return None
        _bump(conn)
        name = conn.execute("SELECT name FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0]
    return {"id": key_id, "key": plain, "name": name, "previous_valid_until": now + grace}


def revoke_key(conn: sqlite3.Connection, key_id: str) -> bool:
    with conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        _bump(conn)
    return cur.rowcount > 0


_LIST_SQL = (
    "SELECT id, name, key_prefix, created_at, revoked_at, rpm, tpm, budget_usd, models,"
    " budget_period, expires_at, rotated_at, prev_valid_until FROM api_keys"
)


def _shown(r: Sequence[Any]) -> dict[str, Any]:
    return {
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
        "budget_period": r[9] or "total",
        "expires_at": r[10],
        "expired": r[10] is not None and r[10] <= time.time(),
        "rotated_at": r[11],
        "previous_valid_until": r[12],
    }


def list_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_shown(r) for r in conn.execute(_LIST_SQL + " ORDER BY created_at")]


def get_key(conn: sqlite3.Connection, key_id: str) -> dict[str, Any] | None:
    row = conn.execute(_LIST_SQL + " WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else _shown(row)
