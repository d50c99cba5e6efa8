"""/admin/*: keys and usage over HTTP, behind `PROMETHEUS_ADMIN_KEY`.

Unset admin key: every admin call is 403. No bearer: 401. A user's active API
key: 403 (it is a credential, just not this one). Any other bearer (any bytes
at all): 401, compared in constant time. The work is done by the same
functions the CLI uses (`proxy.auth.keys`, `proxy.usage.report`), on a worker
thread with a short-lived SQLite connection; a key's settings pass the same
checks as `keys create`/`keys update` (`proxy.auth.key_params`). After a
change, this worker's key mirror reloads at once; the others within 200 ms
(and at once for a secret they do not know yet). No answer repeats a key or
the admin key, except the one new secret a create or a rotation returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import orjson
from aiohttp import web

from proxy import storage
from proxy.auth import keys
from proxy.auth.key_params import KeyParamError, check_settings
from proxy.http import errors
from proxy.http.bodies import json_response
from proxy.http.errors import GatewayError
from proxy.server.state import STATE, GatewayState
from proxy.usage import report as usage_report


async def _check_admin(request: web.Request) -> GatewayState:
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
    if not hmac.compare_digest(_digest(token), _digest(state.admin_key)):
        digest = keys.key_digest(token)
        # a key minted a moment ago on another worker is looked up as bearer auth does
        info = await state.keys.find_or_recheck(digest) if digest is not None else None
        if info is not None and not info.revoked:
            raise GatewayError(
                403,
                "An API key cannot use the admin API: send the admin key.",
                type="permission_error",
                code="admin_key_required",
            )
        raise GatewayError(401, "Incorrect admin key.", code="invalid_admin_key")
    return state


def _digest(secret: str) -> bytes:
    # equal-length inputs for compare_digest; a header's non-UTF-8 bytes arrive as
    # lone surrogates, which "surrogatepass" encodes instead of raising
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


async def _in_db(state: GatewayState, work: Any) -> Any:
    def run() -> Any:
        conn = storage.connect(state.config.db_path)
        try:
            return work(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def _read_body(request: web.Request, empty_ok: bool = False) -> dict[str, Any]:
    """The JSON object of an admin call. Parsed with the standard library, which
    reads `NaN`, `Infinity` and `1e400` as numbers, so that the settings' checks can
    name the field they are in (orjson refuses the whole body for them)."""
    raw = await request.read()
    if empty_ok and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.bad_json(f"{exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError):  # not UTF-8, nested too deep, too many digits
        raise errors.bad_json("the body is not a JSON document the gateway can read") from None
    if not isinstance(body, dict):
        raise errors.bad_json("the body must be a JSON object")
    return body


def _refusal(exc: KeyParamError) -> GatewayError:
    if exc.missing:
        return errors.missing_param(exc.param)
    return errors.invalid_param(exc.param, exc.message)


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    if keys.looks_like_key(key_id):
        raise errors.invalid_param(
            "key_id", "Name a key by its id (key_...), not by the key itself."
        )
    return key_id


def _not_found() -> GatewayError:
    return GatewayError(404, "No key with that id.", code="key_not_found")


async def create_key(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    body = await _read_body(request)
    try:
        new = check_settings(body)
    except KeyParamError as exc:
        raise _refusal(exc) from None
    created = await _in_db(
        state,
        lambda c: keys.create_key(
            c,
            new.name,
            rpm=new.rpm,
            tpm=new.tpm,
            budget_usd=new.budget_usd,
            models=new.models,
            budget_period=new.budget_period,
            expires_at=new.expires_at,
        ),
    )
    await state.keys.refresh()
    return json_response(created)


async def list_keys(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    return json_response({"object": "list", "data": await _in_db(state, keys.list_keys)})


async def get_key(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    key_id = _key_id(request)
    found = await _in_db(state, lambda c: keys.get_key(c, key_id))
    if found is None:
        raise _not_found()
    return json_response(found)


async def update_key(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    key_id = _key_id(request)
    body = await _read_body(request)
    try:
        updated = await _in_db(state, lambda c: keys.update_key(c, key_id, body))
    except KeyParamError as exc:
        raise _refusal(exc) from None
    if updated is None:
        raise _not_found()
    await state.keys.refresh()
    return json_response(updated)


async def rotate_key(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    key_id = _key_id(request)
    grace = (await _read_body(request, empty_ok=True)).get("grace_s", 0)
    try:
        rotated = await _in_db(state, lambda c: keys.rotate_key(c, key_id, grace))
    except KeyParamError as exc:
        raise _refusal(exc) from None
    if rotated is None:
        raise GatewayError(404, "No active key with that id.", code="key_not_found")
    await state.keys.refresh()
    return json_response(rotated)


async def revoke_key(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    key_id = _key_id(request)
    if not await _in_db(state, lambda c: keys.revoke_key(c, key_id)):
        raise GatewayError(404, "No active key with that id.", code="key_not_found")
    await state.keys.refresh()
    return json_response({"id": key_id, "revoked": True})


async def delete_key(request: web.Request) -> web.Response:
    """Revokes the key; its row stays, so that its usage keeps its name."""
    state = await _check_admin(request)
    key_id = _key_id(request)
    if not await _in_db(state, lambda c: keys.revoke_key(c, key_id)):
        raise GatewayError(404, "No active key with that id.", code="key_not_found")
    await state.keys.refresh()
    return json_response({"id": key_id, "deleted": True, "revoked": True})


def usage_filters(request: web.Request) -> dict[str, Any]:
    """`by`, `alias` (or `model`), `from`, `to` and `tz` of a usage query, checked."""
    query = request.query
    by = query.get("by", "day")
    if by not in usage_report.PERIODS:
        raise errors.invalid_param("by", "'by' must be 'hour', 'day' or 'week'.")
    found: dict[str, Any] = {"by": by, "alias": query.get("alias") or query.get("model") or None}
    for param, name in (("from", "since"), ("to", "until")):
        text = query.get(param)
        found[name] = None
        if text:
            try:
                found[name] = usage_report.parse_time(text)
            except ValueError:
                raise errors.invalid_param(
                    param, f"'{param}' must be an ISO 8601 date or time, or epoch seconds."
                ) from None
    found["tz"] = query.get("tz") or "UTC"
    if not usage_report.known_zone(found["tz"]):
        raise errors.invalid_param("tz", f"Unknown timezone {found['tz']!r}.")
    return found


async def usage(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    filters = usage_filters(request)
    key_id = request.query.get("key_id") or request.query.get("key") or None
    if request.query.get("central") in ("1", "true"):  # the cluster's ledger (README)
        if filters["by"] == "hour":
            raise errors.invalid_param("by", "The central ledger has 'day' and 'week' only.")
        if filters["tz"] != "UTC":
            raise errors.invalid_param("tz", "The central ledger has UTC days and weeks only.")
        return json_response(await _central_usage(state, key_id, filters["by"]))
    # encoded on the thread too: every key's year by week is ~370k rows (~0.2 s of orjson)
    body = await _in_db(
        state, lambda c: orjson.dumps(usage_report.query_usage(c, key_id, **filters))
    )
    return web.Response(body=body, content_type="application/json")


async def _central_usage(state: GatewayState, key_id: str | None, by: str) -> list[dict[str, Any]]:
    from proxy.usage.sinks.pg_report import LEDGER_ERRORS, central_usage

    dsn = state.config.ship.postgres_dsn or state.config.cluster_dsn
    if not dsn:
        raise errors.invalid_param("central", "No central ledger is configured on this node.")
    try:
        return await central_usage(dsn, key_id, by)
    except LEDGER_ERRORS as exc:
        state.log.warning("central_ledger_unavailable", error=f"{type(exc).__name__}: {exc}")
        raise GatewayError(
            503, "The central ledger is unavailable.", code="central_ledger_unavailable"
        ) from None
