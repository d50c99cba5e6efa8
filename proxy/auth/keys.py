"""API keys at rest: minting, hashing, and the `api_keys` table.

The CLI and the admin API call `create_key`/`revoke_key`/`list_keys`, which
write the table and bump `meta.keys_version`; each gateway process's
`proxy.auth.key_table.KeyTable` notices the bump and reloads its mirror.
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
from dataclasses import dataclass
from typing import Any

from proxy.auth.key_params import check_settings

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

    def allows(self, alias: str) -> bool:
        return self.models is None or alias in self.models


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


def row_to_info(row: Sequence[Any]) -> KeyInfo:
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


SELECT_KEYS = "SELECT id, name, key_hash, revoked_at, rpm, tpm, budget_usd, models FROM api_keys"


def create_key(
    conn: sqlite3.Connection,
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    budget_usd: float | None = None,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """Store a new key (hashed) and return the only copy of the plain key.

    The settings are checked (`proxy.auth.key_params`) before anything is written:
    `KeyParamError` names the one refused."""
    key = check_settings(
        {"name": name, "rpm": rpm, "tpm": tpm, "budget_usd": budget_usd, "models": models}
    )
    plain = new_plain_key()
    kid = "key_" + secrets.token_hex(8)
    with conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at, rpm, tpm,"
            " budget_usd, models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
    return {"id": kid, "key": plain, "name": key.name}


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
