"""GET /v1/usage: a key holder's own usage and limits, read with its own key.

The rows are `proxy.usage.report.query_usage`'s, always for the calling key
(no parameter can name another: `key_id` is ignored), with the same filters
as `GET /admin/usage` (`by`, `alias`, `from`, `to`). `limits` shows the key's
settings and `current` what its window and budget hold right now, from the
machine's limits table (`proxy.auth.limits`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from proxy import storage
from proxy.admin.api import usage_filters
from proxy.auth.admission import LIMITS
from proxy.auth.keys import KeyInfo
from proxy.auth.limits import TableFull
from proxy.http.bodies import json_response
from proxy.server.state import STATE
from proxy.usage import report as usage_report


def _current(request: web.Request, key: KeyInfo) -> dict[str, Any]:
    limits = request.app[LIMITS]
    now = time.time()
    try:
        window = limits.local.peek(key.id, now)
        spent = limits.local.spend(key.id, key.budget_period, now)
    except TableFull:
        return {}
    budget = key.budget_usd
    return {
        "requests_in_window": window.requests,
        "tokens_in_window": window.tokens,
        "window_s": 60,
        "spend_usd": spent,
        "budget_remaining_usd": None if budget is None else max(budget - spent, 0.0),
    }


async def own_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key: KeyInfo = request["key"]
    filters = usage_filters(request)

    def read() -> orjson.Fragment:
        conn = storage.connect(state.config.db_path)
        try:  # encoded on the thread too: a year by hour is ~70k rows
            return orjson.Fragment(orjson.dumps(usage_report.query_usage(conn, key.id, **filters)))
        finally:
            conn.close()

    rows = await asyncio.to_thread(read)
    return json_response(
        {
            "object": "usage",
            "key_id": key.id,
            "name": key.name,
            "limits": {
                "rpm": key.rpm,
                "tpm": key.tpm,
                "budget_usd": key.budget_usd,
                "budget_period": key.budget_period,
                "models": sorted(key.models) if key.models is not None else None,
                "expires_at": key.expires_at,
            },
            "current": _current(request, key),
            "data": rows,
        }
    )
