#!/usr/bin/env python3
"""The reference point for the gateway's overhead: a bare relay.

aiohttp on uvloop; POST /v1/{path} is forwarded to the upstream base URL over
one shared ClientSession (keep-alive, no connection limit) and the answer goes
back byte for byte: a body with a Content-Length in one write, a stream chunk
by chunk as it arrives. No auth, no rewriting, no metering. Whatever the
gateway costs above this is the price of what it does on top.

    python bench/bare_relay.py --port 18081 --upstream http://127.0.0.1:18090/v1
"""

import argparse
import resource

import aiohttp
from aiohttp import web

PASS_REQ = ("Content-Type", "Authorization", "Accept")
PASS_RESP = ("Content-Type", "Content-Encoding", "Cache-Control")


def build_app(upstream: str) -> web.Application:
    upstream = upstream.rstrip("/")

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {h: request.headers[h] for h in PASS_REQ if h in request.headers}
        url = f"{upstream}/{request.match_info['path']}"
        async with request.app["session"].post(url, data=body, headers=headers) as up:
            out = {h: up.headers[h] for h in PASS_RESP if h in up.headers}
            if up.content_length is not None:
                return web.Response(status=up.status, body=await up.read(), headers=out)
            resp = web.StreamResponse(status=up.status, headers=out)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/{path:.*}", relay)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    try:  # the gateway's opt-in loop-lag probe, as a control (PROMETHEUS_LOOP_LAG_PROBE=1)
        from proxy.observability import loop_lag
    except ImportError:
        return app
    loop_lag.install(app)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="bare aiohttp relay (benchmark reference)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18081)
    p.add_argument(
        "--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:18090/v1"
    )
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    web.run_app(
        build_app(a.upstream),
        host=a.host,
        port=a.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
