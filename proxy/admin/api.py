"""/admin/*: keys and usage over HTTP, behind `PROMETHEUS_ADMIN_KEY`.

Unset admin key: every admin call is 403. A wrong bearer: 401. The work is
done by the same functions the CLI uses (`proxy.auth.keys`, `proxy.usage.report`),
on a worker thread with a short-lived SQLite connection.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from aiohttp import web

from proxy import storage
from proxy.auth import keys
from proxy.http import errors
from proxy.http.bodies import json_response, read_json_body
from proxy.http.errors import GatewayError
from proxy.server.state import STATE, GatewayState
from proxy.usage import report as usage_report


def _check_admin(request: web.Request) -> GatewayState:
    state = request.app[STATE]
    if state.admin_key is None:
        raise GatewayError(
            403,
            "The admin API is disabled: set PROMETHEUS_ADMIN_KEY.",
            type="permission_error",
            code="admin_disabled",
        )
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not token:
        raise errors.missing_key()
    if not hmac.compare_digest(token.encode(), state.admin_key.encode()):
        raise GatewayError(401, "Incorrect admin key.", code="invalid_admin_key")
    return state


async def _in_db(state: GatewayState, work: Any) -> Any:
    def run() -> Any:
        conn = storage.connect(state.config.db_path)
        try:
            return work(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.invalid_param(name, f"'{name}' must be a non-negative integer.")
    return value


async def create_key(request: web.Request) -> web.Response:
    state = _check_admin(request)
    body = await read_json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise errors.missing_param("name")
    rpm, tpm = _opt_int(body, "rpm"), _opt_int(body, "tpm")
    budget = body.get("budget_usd")
    if budget is not None and (not isinstance(budget, (int, float)) or budget < 0):
        raise errors.invalid_param("budget_usd", "'budget_usd' must be a non-negative number.")
    models = body.get("models")
    if isinstance(models, str):
        models = [m for m in models.split(",") if m]
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) for m in models)
    ):
        raise errors.invalid_param("models", "'models' must be a list of aliases.")
    created = await _in_db(
        state,
        lambda c: keys.create_key(c, name, rpm=rpm, tpm=tpm, budget_usd=budget, models=models),
    )
    await state.keys.refresh()
    return json_response(created)


async def list_keys(request: web.Request) -> web.Response:
    state = _check_admin(request)
    return json_response({"object": "list", "data": await _in_db(state, keys.list_keys)})


async def revoke_key(request: web.Request) -> web.Response:
    state = _check_admin(request)
    key_id = request.match_info["key_id"]
    if not await _in_db(state, lambda c: keys.revoke_key(c, key_id)):
        raise GatewayError(404, f"No active key with id '{key_id}'.", code="key_not_found")
    await state.keys.refresh()
    return json_response({"id": key_id, "revoked": True})


async def usage(request: web.Request) -> web.Response:
    state = _check_admin(request)
    by = request.query.get("by", "day")
    if by not in usage_report.PERIODS:
        raise errors.invalid_param("by", "'by' must be 'day' or 'week'.")
    key_id = request.query.get("key_id") or None
    rows = await _in_db(state, lambda c: usage_report.query_usage(c, key_id, by))
    return json_response(rows)
