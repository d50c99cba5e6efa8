"""Shared fixtures: one fake OpenAI upstream and one gateway process per session.

The session gateway serves:
- prometheus-lite, prometheus-core -> the fake upstream (tests/upstream_app.py)
  under the upstream names `up-lite` and `up-core`, with the upstream's own key;
- prometheus-atlas -> the fake upstream's embeddings (`up-embed`);
- prometheus-surge -> a loopback port where nothing listens (upstream down);
- prometheus-pulse -> the in-process simulator, paced to be quick;
- team-custom -> a custom alias on the fake upstream, with its own price;
- everything else keeps the built-in default (the simulator).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_process import GatewayProcess, gateway_config
from upstream_app import Upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway"), gateway_config(upstream.base_url))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def api_key(gateway: GatewayProcess) -> dict[str, Any]:
    return gateway.create_key("session-client")


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key["key"], max_retries=0,
                         timeout=30)


@pytest.fixture()
def fresh_key(gateway: GatewayProcess, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A key of this test's own, so its usage rows are its alone."""
    return gateway.create_key(f"t-{request.node.name[:40]}")
