"""A test server on its own event loop in a background thread, on a free
loopback port: the base of the fake upstreams (`upstream_app`,
`faulty_upstream`, `anthropic_upstream`). A subclass says what it serves in
`build_app`; `start()` returns once it listens, `stop()` ends it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web


class ThreadedServer:
    NAME = "test-server"
    URL_SUFFIX = ""  # appended to http://127.0.0.1:PORT in base_url
    RUNNER_OPTIONS: dict[str, Any] = {}

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.URL_SUFFIX}"

    def build_app(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.NAME, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.NAME} did not start")

    async def _listen(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None, **self.RUNNER_OPTIONS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
