"""The dashboard page and its assets, served from the installed packages.

`GET /dashboard` is `static/index.html`; `/dashboard/static/{name}` the page's
own script and style (package data of `proxy.admin.dashboard`); and
`/dashboard/vendor/plotly.min.js` the charting library's browser bundle as the
`plotly` package from PyPI ships it (`plotly/package_data/plotly.min.js`). So
the page needs nothing from the network at view time, and `pip install .`
gives a working dashboard without Node.js. Each file is read once, on its first
request, and kept.
"""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from proxy.http.errors import GatewayError

STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_cache: dict[str, bytes] = {}


def _read(package: str, path: str) -> bytes:
    name = f"{package}/{path}"
    if name not in _cache:
        _cache[name] = resources.files(package).joinpath(path).read_bytes()
    return _cache[name]


async def _asset(package: str, path: str, content_type: str) -> web.Response:
    body = await asyncio.to_thread(_read, package, path)
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def page(request: web.Request) -> web.Response:
    return await _asset("proxy.admin.dashboard", "static/index.html", "text/html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC or name == "index.html":
        raise GatewayError(404, f"Unknown path: {request.path}", code="not_found")
    return await _asset("proxy.admin.dashboard", f"static/{name}", STATIC[name])


async def plotly_js(request: web.Request) -> web.Response:
    return await _asset("plotly", "package_data/plotly.min.js", "text/javascript")
