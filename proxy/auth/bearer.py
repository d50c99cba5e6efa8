"""Checking a request's bearer key, called by `proxy.http.middleware` for `/v1/*`.

A token not shaped like a key is refused at once. Otherwise it is hashed and
looked up in the process's `KeyTable` (no database round trip for a known
key); a miss makes the table re-check SQLite (shared, spaced checks), so a key
minted a moment ago works. A revoked key, an expired one and a rotated-out
secret past its grace are refused (401, each with its own code). The key
found is left on the request as `request["key"]` for the handlers. No answer repeats the token.
"""

from __future__ import annotations

import time

from aiohttp import web

from proxy.auth import refusals
from proxy.auth.key_table import KeyTable
from proxy.auth.keys import key_digest
from proxy.http import errors


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request, keys: KeyTable) -> None:
    token = bearer_token(request)
    if token is None:
        raise errors.missing_key()
    digest = key_digest(token)
    if digest is None:
        raise errors.invalid_key()
    info = keys.find(digest) or await keys.find_or_recheck(digest)
    if info is None:
        raise errors.invalid_key()
    if info.revoked:
        raise errors.revoked_key()
    if info.valid_until is not None or info.expires_at is not None:
        now = time.time()
        if info.valid_until is not None and now >= info.valid_until:
            raise errors.invalid_key()  # a rotated-out secret past its grace
        if info.expires_at is not None and now >= info.expires_at:
            raise refusals.expired_key()
    request["key"] = info
