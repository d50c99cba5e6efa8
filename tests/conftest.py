"""Shared fixtures: one fake OpenAI upstream and one gateway process per session
(per `_fastpath` twin, see below).

The session gateway serves:
- prometheus-lite, prometheus-core -> the fake upstream (tests/upstream_app.py)
  under the upstream names `up-lite` and `up-core`, with the upstream's own key;
- prometheus-atlas -> the fake upstream's embeddings (`up-embed`);
- prometheus-surge -> a loopback port where nothing listens (upstream down);
- prometheus-pulse -> the in-process simulator, paced to be quick;
- team-custom -> a custom alias on the fake upstream, with its own price;
- everything else keeps the built-in default (the simulator).

It runs the compiled `_fastpath` twin. Modules marked `both_fastpath_twins`
(the end-to-end chat, stream and metering tests) run each test a second time
against a gateway started with `PROMETHEUS_NO_EXTENSIONS=1`, which serves with
the pure-Python twin: ids `[compiled]` and `[pure]`. Each twin's gateway is
started once, on first use, and both stay up for the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from faulty_upstream import FaultyUpstream
from gateway_process import GatewayProcess, gateway_config
from upstream_app import Upstream

# the gateway's extra environment per twin (gateway_env strips PROMETHEUS_* from ours)
FASTPATH_TWINS: dict[str, dict[str, str]] = {
    "compiled": {},
    "pure": {"PROMETHEUS_NO_EXTENSIONS": "1"},
}
BOTH_TWINS = "both_fastpath_twins"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{BOTH_TWINS}: run against the session gateway once per _fastpath twin"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gateway" in metafunc.fixturenames and metafunc.definition.get_closest_marker(BOTH_TWINS):
        metafunc.parametrize("gateway", list(FASTPATH_TWINS), indirect=True)


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    """An upstream that misbehaves on purpose (`faulty_upstream`), one per module."""
    up = FaultyUpstream()
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.start()
    yield up
    up.stop()


class SessionGateways:
    """The session's gateways in front of the fake upstream, one per `_fastpath`
    twin, each started on first use, with one client key each."""

    def __init__(self, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._upstream = upstream
        self._tmp = tmp_path_factory
        self._gateways: dict[str, GatewayProcess] = {}
        self._keys: dict[int, dict[str, Any]] = {}  # by gateway port

    def gateway(self, twin: str) -> GatewayProcess:
        if twin not in self._gateways:
            gw = GatewayProcess(
                self._tmp.mktemp(f"gateway-{twin}"),
                gateway_config(self._upstream.base_url),
                env=FASTPATH_TWINS[twin],
            )
            self._gateways[twin] = gw.start()
        return self._gateways[twin]

    def api_key(self, gw: GatewayProcess) -> dict[str, Any]:
        if gw.port not in self._keys:
            self._keys[gw.port] = gw.create_key("session-client")
        return self._keys[gw.port]

    def stop(self) -> None:
        for gw in self._gateways.values():
            gw.stop()


@pytest.fixture(scope="session")
def session_gateways(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SessionGateways]:
    gateways = SessionGateways(upstream, tmp_path_factory)
    yield gateways
    gateways.stop()


@pytest.fixture()
def gateway(session_gateways: SessionGateways, request: pytest.FixtureRequest) -> GatewayProcess:
    """The session gateway of this test's twin: "compiled" unless parametrised."""
    return session_gateways.gateway(getattr(request, "param", "compiled"))


@pytest.fixture()
def fastpath_twin(request: pytest.FixtureRequest) -> str:
    """The twin this test's `gateway` is meant to serve with, as in the test's id."""
    callspec = getattr(request.node, "callspec", None)
    return str(callspec.params.get("gateway", "compiled")) if callspec else "compiled"


@pytest.fixture()
def api_key(session_gateways: SessionGateways, gateway: GatewayProcess) -> dict[str, Any]:
    """One key per session gateway, made on first use."""
    return session_gateways.api_key(gateway)


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.base_url, api_key=api_key["key"], max_retries=0, timeout=30
    )


@pytest.fixture()
def fresh_key(gateway: GatewayProcess, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A key of this test's own, so its usage rows are its alone."""
    return gateway.create_key(f"t-{request.node.name[:40]}")
