"""The dashboard's JSON, read from the usage rollups (and the request log).

Routes (wired in `proxy.server.app`): `POST /dashboard/session` (sign in, sets
the cookie), `DELETE /dashboard/session`, and behind the cookie
`GET /dashboard/api/usage` (day or week series per alias and in total),
`GET /dashboard/api/keys` (keys with their limits and spend today and this
week) and `GET /dashboard/api/requests` (the recent request log, never a
prompt or a completion). A key holder sees only their own key: asking for
another is a 403. Each call runs on a worker thread with a short-lived SQLite
connection, as the admin API does; none is on the request path of `/v1`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from proxy import storage
from proxy.admin.dashboard.session import COOKIE, Viewer, set_cookie, sign_in, viewer_of
from proxy.http import errors
from proxy.http.bodies import json_response, read_json_body
from proxy.http.errors import GatewayError
from proxy.server.state import STATE
from proxy.usage.rollup_query import last_days, periods, spend_since, usage_series

T = TypeVar("T")
SHOWN = {"day": 30, "week": 84}  # the last 30 days; the last 12 ISO weeks
LOG_COLUMNS = (
    "ts, request_id, key_id, model, status, input_tokens, output_tokens, audio_seconds,"
    " latency_ms, ttft_ms, cost_usd, deployment"
)


async def _in_db(request: web.Request, work: Callable[[sqlite3.Connection], T]) -> T:
    path = request.app[STATE].config.db_path

    def run() -> T:
        conn = storage.connect(path)
        try:
            return work(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def _viewed(request: web.Request, work: Callable[[sqlite3.Connection, Viewer], T]) -> T:
    cookie = request.cookies.get(COOKIE)
    admin_key = request.app[STATE].admin_key
    return await _in_db(request, lambda c: work(c, viewer_of(c, cookie, admin_key)))


def _key_scope(request: web.Request, viewer: Viewer) -> str | None:
    asked = request.query.get("key_id") or None
    if viewer.admin:
        return asked
    if asked is not None and asked != viewer.key_id:
        raise GatewayError(
            403, "This session may see only its own key.", type="permission_error",
            code="key_not_visible", param="key_id",
        )  # fmt: skip
    return viewer.key_id


def _zone(request: web.Request) -> str:
    tz = request.query.get("tz", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.invalid_param("tz", f"Unknown timezone {tz!r}.") from None
    return tz


async def create_session(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    token = body.get("key")
    if not isinstance(token, str) or not token:
        raise errors.missing_param("key")
    admin_key = request.app[STATE].admin_key
    viewer, cookie = await _in_db(request, lambda c: sign_in(c, token, admin_key))
    response = json_response({"scope": "admin" if viewer.admin else "key", "key_id": viewer.key_id})
    set_cookie(response, cookie)
    return response


async def delete_session(request: web.Request) -> web.Response:
    response = json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/dashboard")
    return response


async def usage(request: web.Request) -> web.Response:
    by = request.query.get("by", "day")
    if by not in SHOWN:
        raise errors.unsupported_value("by", by, tuple(SHOWN))
    tz = _zone(request)

    def work(conn: sqlite3.Connection, viewer: Viewer) -> dict[str, Any]:
        key_id = _key_scope(request, viewer)
        window = last_days(SHOWN[by], tz, by)
        return {
            "by": by,
            "tz": tz,
            "key_id": key_id,
            "periods": periods(window),
            "rows": usage_series(conn, window, key_id),
        }

    return json_response(await _viewed(request, work))


def _spend(conn: sqlite3.Connection, tz: str) -> dict[str, tuple[float, float]]:
    """Spend today and this ISO week (local), per key, from the rollups."""
    zone = ZoneInfo(tz)
    today = datetime.now(zone).date()
    monday = today - timedelta(days=today.weekday())
    day = spend_since(conn, datetime.combine(today, time(0), zone).timestamp(), "day")
    week = spend_since(conn, datetime.combine(monday, time(0), zone).timestamp(), "week")
    return {key: (day.get(key, 0.0), week.get(key, 0.0)) for key in {*day, *week}}


async def keys(request: web.Request) -> web.Response:
    tz = _zone(request)

    def work(conn: sqlite3.Connection, viewer: Viewer) -> dict[str, Any]:
        sql = "SELECT id, name, rpm, tpm, budget_usd, revoked_at FROM api_keys"
        args: tuple[Any, ...] = ()
        if not viewer.admin:
            sql, args = sql + " WHERE id = ?", (viewer.key_id,)
        spend = _spend(conn, tz)
        data = []
        for key_id, name, rpm, tpm, budget, revoked_at in conn.execute(sql + " ORDER BY id", args):
            today, week = spend.get(key_id, (0.0, 0.0))
            data.append(
                {"id": key_id, "name": name, "rpm": rpm, "tpm": tpm, "budget_usd": budget,
                 "revoked": revoked_at is not None, "spend_today_usd": today,
                 "spend_week_usd": week}
            )  # fmt: skip
        return {"object": "list", "tz": tz, "data": data}

    return json_response(await _viewed(request, work))


async def recent_requests(request: web.Request) -> web.Response:
    alias = request.query.get("alias") or None
    status = request.query.get("status") or None
    if status not in (None, "ok", "error"):
        raise errors.unsupported_value("status", status or "", ("ok", "error"))
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        raise errors.invalid_param("limit", "limit must be a whole number.") from None

    def work(conn: sqlite3.Connection, viewer: Viewer) -> dict[str, Any]:
        key_id = _key_scope(request, viewer)
        where, args = ["1"], []
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        if alias is not None:
            where.append("model = ?")
            args.append(alias)
        if status is not None:
            where.append("status < 400" if status == "ok" else "status >= 400")
        cur = conn.execute(
            f"SELECT {LOG_COLUMNS} FROM requests WHERE {' AND '.join(where)}"
            " ORDER BY ts DESC LIMIT ?",
            [*args, limit],
        )
        names = [d[0] for d in cur.description]
        return {"object": "list", "data": [dict(zip(names, row, strict=True)) for row in cur]}

    return json_response(await _viewed(request, work))
