"""GET /openapi.json: the gateway's own API description, without a key.

The document is `schemas/openapi.yaml`, shipped inside the package as JSON
(`proxy/api/openapi.json`, kept equal to the YAML by tests/test_openapi_spec.py)
so that an installed gateway serves it without the source tree or PyYAML.
It is read once per process, on first request.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

SPEC_FILE = Path(__file__).with_name("openapi.json")


@cache
def _spec_bytes() -> bytes:
    return SPEC_FILE.read_bytes()


async def spec(request: web.Request) -> web.Response:
    return web.Response(body=_spec_bytes(), content_type="application/json")
