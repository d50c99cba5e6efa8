"""Dashboard sign-in: a `prom_sk_` key or the admin key in, a session cookie out.

The key is sent once, in the body of `POST /dashboard/session`; after that the
browser holds only a cookie (HttpOnly, SameSite=Strict, Path=/dashboard, one
hour), never the key. The cookie is stateless, so every worker accepts it:
`k.<key_id>.<expiry>.<mac>` signed with HMAC-SHA256 under the key's own stored
sha256 (which only the database holds), or `a.<expiry>.<mac>` under the sha256
of the admin key. Revoking the key, or changing the admin key, ends its
sessions; nothing else can mint one.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from dataclasses import dataclass

from aiohttp import web

from proxy.auth.keys import key_digest
from proxy.http.errors import GatewayError

COOKIE = "prom_dashboard"
LIFETIME_S = 3600


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the admin (every key) or one key holder (`key_id`)."""

    key_id: str | None

    @property
    def admin(self) -> bool:
        return self.key_id is None


def refused() -> GatewayError:
    return GatewayError(
        401, "Sign in with an API key or the admin key.", code="invalid_dashboard_session"
    )


def _mac(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _admin_secret(admin_key: str) -> str:
    return hashlib.sha256(admin_key.encode("utf-8", "surrogatepass")).hexdigest()


def sign_in(conn: sqlite3.Connection, token: str, admin_key: str | None) -> tuple[Viewer, str]:
    """The viewer a token signs in as, and its cookie value; refused() otherwise."""
    expiry = str(int(time.time()) + LIFETIME_S)
    if admin_key is not None and hmac.compare_digest(
        _admin_secret(token), _admin_secret(admin_key)
    ):
        payload = f"a.{expiry}"
        return Viewer(None), f"{payload}.{_mac(_admin_secret(admin_key), payload)}"
    digest = key_digest(token)
    if digest is None:
        raise refused()
    row = conn.execute(
        "SELECT id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    if row is None:
        raise refused()
    payload = f"k.{row[0]}.{expiry}"
    return Viewer(row[0]), f"{payload}.{_mac(digest, payload)}"


def viewer_of(conn: sqlite3.Connection, cookie: str | None, admin_key: str | None) -> Viewer:
    """The viewer a cookie stands for, checked against the database; refused() if
    it is missing, forged, expired, or its key was revoked since."""
    if not cookie:
        raise refused()
    payload, _, mac = cookie.rpartition(".")
    parts = payload.split(".")
    try:
        expired = int(parts[-1]) < time.time()
    except ValueError:
        raise refused() from None
    if expired:
        raise refused()
    if parts[0] == "a" and len(parts) == 2 and admin_key is not None:
        if hmac.compare_digest(mac, _mac(_admin_secret(admin_key), payload)):
            return Viewer(None)
    elif parts[0] == "k" and len(parts) == 3:
        row = conn.execute(
            "SELECT key_hash FROM api_keys WHERE id = ? AND revoked_at IS NULL", (parts[1],)
        ).fetchone()
        if row is not None and hmac.compare_digest(mac, _mac(row[0], payload)):
            return Viewer(parts[1])
    raise refused()


def set_cookie(response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=LIFETIME_S,
        path="/dashboard",
        httponly=True,
        samesite="Strict",
    )
