"""aiohttp's runner with the gateway's protocol, and the drain at shutdown.

`proxy.server.worker` runs the app through `GatewayAppRunner`: aiohttp's
`AppRunner` whose server (`GatewayServer`) makes a
`proxy.server.protocol.GatewayRequestHandler` per connection and keeps the
requests in flight (their handler tasks). On SIGTERM, `GatewayServer.drain`
closes idle keep-alive connections and takes no new request on the others,
lets those in flight finish for the configured grace, then ends the rest:
each is marked `ENDED_BY_SHUTDOWN` and cancelled once. The stream relay
(`proxy.api.streaming`) answers such a cancellation with an error event, the
meter (`proxy.metering.meter`) bills it as a shutdown, and the middleware
answers a request that had sent nothing yet with a 503. The drain then waits
for them to settle (a local token count may first have to load its
tokenizer) before the app's cleanup flushes the usage records to SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.server.protocol import GatewayRequestHandler
from proxy.server.state import ENDED_BY_SHUTDOWN

SETTLE_S = 30.0
"""How long ended requests may take to bill and answer (tokenizer load included)."""
SWEEP_S = 0.1
"""While draining: how often connections that finished a request are closed."""

AppHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GatewayServer(web.Server):
    """aiohttp's low-level server: our protocol, and the requests in flight."""

    def __init__(self, handler: AppHandler, **kwargs: Any) -> None:
        super().__init__(self._track, **kwargs)
        self._app_handler = handler
        # handler task -> its request, from the handler's start until the
        # response is written (the task's end)
        self.in_flight: dict[asyncio.Task[Any], web.BaseRequest] = {}

    def _track(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        task = asyncio.current_task()
        if task is not None:
            self.in_flight[task] = request
            task.add_done_callback(self.in_flight.pop)
        return self._app_handler(request)

    def __call__(self) -> web.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)

    async def drain(self, grace_s: float) -> int:
        """Let the requests in flight finish within `grace_s`, then end the others and
        wait (up to `SETTLE_S`) until they are answered and billed. Returns how many
        had to be ended."""
        loop = asyncio.get_running_loop()
        await self._wait_in_flight(loop.time() + grace_s)
        ended = 0
        for task, request in list(self.in_flight.items()):
            if task.cancelling():  # already on its way out (its client left)
                continue
            request[ENDED_BY_SHUTDOWN] = True
            task.cancel()
            ended += 1
        # cancelled once only: a second cancellation could interrupt the billing
        await self._wait_in_flight(loop.time() + SETTLE_S)
        return ended

    async def _wait_in_flight(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for conn in self.connections:
                if isinstance(conn, GatewayRequestHandler):
                    conn.take_no_more_requests()
            left = deadline - loop.time()
            if not self.in_flight or left <= 0:
                return
            await asyncio.wait(list(self.in_flight), timeout=min(left, SWEEP_S))


class GatewayAppRunner(web.AppRunner):
    """aiohttp's `AppRunner`, serving through a `GatewayServer`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's on_startup runs here
        return GatewayServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )

    @property
    def gateway_server(self) -> GatewayServer:
        server = self.server
        assert isinstance(server, GatewayServer), "setup() has not run"
        return server
