"""What an idle serving process holds: the handlers of the rarer routes are
imported at their first request, and the config file's schema check runs in a
child process, so a worker that serves only chat and embeddings never imports
them (bench/README.md, "Idle memory, third pass")."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from proxy.config.load import ConfigError, load_config
from proxy.server.app import add_routes

CONFIG = """
[server]
port = 18999

[[models.prometheus-lite.deployments]]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test"
model = "some-model"
"""

NOT_AT_IDLE = (
    "jsonschema",
    "proxy.admin.api",
    "proxy.admin.dashboard.data",
    "proxy.admin.dashboard.assets",
    "proxy.api.audio",
    "proxy.api.usage",
    "proxy.api.docs",
    "proxy.api.openapi",
    "proxy.usage.report",
    "proxy.server.supervisor",
    "multiprocessing",
    "zipfile",
    "zoneinfo",
)

SERVING_PROCESS = """
import json, sys
from proxy.cli import build_parser, _config
from proxy.server.app import build_app
import proxy.server.lifecycle
config = _config(build_parser().parse_args(["serve", "--config", sys.argv[1]]), long_running=True)
build_app(config)
print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))
"""


def test_every_route_handler_names_a_coroutine_function() -> None:
    app = web.Application()
    add_routes(app)
    for route in app.router.routes():
        handler = route.handler
        target = getattr(importlib.import_module(handler.__module__), handler.__name__)
        assert asyncio.iscoroutinefunction(target), (route.method, route.resource)


def test_a_serving_process_holds_none_of_the_rare_modules(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG)
    code = SERVING_PROCESS.format(names=NOT_AT_IDLE)
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_the_check_apart_refuses_what_the_check_here_refuses(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "x"\nbogus = 1\n[[models.prometheus-lite.deployments]]\n')
    messages = []
    for apart in (False, True):
        try:
            load_config(str(path), env={}, check_apart=apart)
        except ConfigError as exc:
            messages.append(str(exc))
    assert len(messages) == 2 and messages[0] == messages[1]
    assert "server.bogus: unknown field" in messages[0]
    assert "server.port: 'x' is not of type 'integer'" in messages[0]
