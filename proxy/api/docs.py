"""GET /llms.txt: the agent spec, a plain-text page an autonomous agent can be given.

The page ships inside the package (`proxy/api/llms.txt`; `docs/llms.txt` in the
repository is a link to it), is read once at import and served without a key,
like `/healthz`: it holds nothing secret, and an agent reads it before it has one.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

LLMS_TXT = resources.files("proxy.api").joinpath("llms.txt").read_bytes()


async def llms_txt(request: web.Request) -> web.Response:
    return web.Response(
        body=LLMS_TXT,
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )
