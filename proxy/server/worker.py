"""One serving process, from its listening socket to its exit code.

`proxy.server.lifecycle.run_worker` runs `serve_app` on uvloop, in the only
process (one worker) or in each forked worker (`proxy.server.supervisor`,
sharing the port through SO_REUSEPORT). In order: SIGTERM/SIGINT are routed
to the loop, the socket is bound (a port in use ends the process at once with
`EXIT_CANNOT_LISTEN` and one log line naming it), the app starts
(`proxy.server.app`), and requests are served until a stop signal. Then the
listening socket closes, requests in flight get `drain_s` to finish
(`proxy.server.runner`), and the app's cleanup writes every usage record to
SQLite before the process exits 0.

`cannot_listen` is the same check done once up front by `lifecycle.serve`,
before any worker is forked, with a bind that also fails on a port another
process shares through SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket

from proxy.config.model import GatewayConfig
from proxy.observability.logs import get_logger
from proxy.server.app import build_app
from proxy.server.protocol import hide_server_version
from proxy.server.runner import GatewayAppRunner

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
EXIT_CANNOT_LISTEN = 3
BACKLOG = 4096
KEEPALIVE_S = 75.0  # idle keep-alive connections close after this
CLEANUP_S = 5.0  # after the drain: what aiohttp's own shutdown may still wait for


def listen_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: port {port} is already in use by another process"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def cannot_listen(host: str, port: int) -> str | None:
    """Why this process could not listen on host:port, or None: each of the host's
    addresses is bound (not listened on) and released again."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return listen_failure(host, port, exc)
    return None


async def serve_app(config: GatewayConfig, reuse_port: bool) -> int:
    """Serve until SIGTERM/SIGINT, drain, clean up; the process's exit code."""
    loop = asyncio.get_running_loop()
    log = get_logger()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # a forked worker starts with these blocked (see supervisor): a stop signal
    # sent while it started up is delivered now, to the handler above
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    hide_server_version()
    runner = GatewayAppRunner(
        build_app(config),
        handler_cancellation=True,  # a client that leaves cancels its handler at once
        access_log=None,
        keepalive_timeout=KEEPALIVE_S,
        shutdown_timeout=CLEANUP_S,
    )
    try:
        listener = await loop.create_server(
            lambda: runner.gateway_server(),  # a protocol per connection, once set up
            config.host,
            config.port,
            backlog=BACKLOG,
            reuse_port=reuse_port,
            start_serving=False,
        )
    except OSError as exc:
        log.error(
            "cannot_listen",
            message=listen_failure(config.host, config.port, exc),
            host=config.host,
            port=config.port,
        )
        return EXIT_CANNOT_LISTEN
    await runner.setup()
    try:
        await listener.start_serving()
        await stop.wait()
        listener.close()  # new connections are refused from here on
        server = runner.gateway_server
        log.info("shutdown", in_flight=len(server.in_flight), drain_s=config.drain_s)
        ended = await server.drain(config.drain_s)
    finally:
        await runner.cleanup()  # the usage writer flushes to SQLite here
    log.info("stopped", ended_by_shutdown=ended)
    return 0


def run_app_loop(config: GatewayConfig, reuse_port: bool) -> int:
    """`serve_app` on a fresh uvloop event loop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        return loop_runner.run(serve_app(config, reuse_port))
