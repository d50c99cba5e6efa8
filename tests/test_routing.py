"""Routing that survives upstream faults: breakers, failover, retries.

The breaker's states are checked directly (a pure object, with a clock the
test moves); the rest through a gateway in front of `faulty_upstream`, with
the official SDK, the admin health view and the upstream's own record of
what reached it.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from faulty_upstream import REPLY, FaultyUpstream
from gateway_process import ADMIN_KEY, GatewayProcess, running_gateway
from waiting import wait_for

from proxy.routing import breaker as breakers
from proxy.routing.breaker import CLOSED, HALF_OPEN, OPEN, Breaker

MESSAGES = [{"role": "user", "content": "hello"}]


def test_a_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    b = Breaker()
    for _ in range(breakers.OPEN_AFTER_CONSECUTIVE - 1):
        b.failed(0.0, "upstream_error")
    assert b.state == CLOSED and b.allows(0.0)
    b.failed(1.0, "upstream_error")
    assert b.state == OPEN and not b.allows(1.0 + breakers.COOLDOWN_S - 0.1)
    assert b.allows(1.0 + breakers.COOLDOWN_S)  # the one half-open probe
    assert b.state == HALF_OPEN and not b.allows(1.0 + breakers.COOLDOWN_S)
    b.failed(20.0, "upstream_error")  # the probe failed: open again, a new cool-down
    assert b.state == OPEN and not b.allows(20.0 + breakers.COOLDOWN_S - 0.1)
    assert b.allows(20.0 + breakers.COOLDOWN_S)
    b.succeeded()
    assert b.state == CLOSED and b.allows(0.0) and b.consecutive == 0


def test_a_breaker_opens_on_a_failure_rate_without_a_streak() -> None:
    b = Breaker()
    for i in range(breakers.RATE_WINDOW):
        if i % 3 == 2:
            b.succeeded()
        else:
            b.failed(float(i), "upstream_error")
        if b.state == OPEN:
            break
    assert b.state == OPEN  # two failures in three, never five in a row
    assert b.consecutive < breakers.OPEN_AFTER_CONSECUTIVE


def _config(base_url: str) -> str:
    def dep(alias: str, model: str) -> str:
        return (
            f'\n[[models.{alias}.deployments]]\nprovider = "openai"\n'
            f'base_url = "{base_url}"\nmodel = "{model}"\n'
        )

    return (
        '[storage]\npath = "gateway.db"\n'
        + dep("r-mixed", "leaky-500")
        + dep("r-mixed", "ok")
        + dep("r-single-500", "leaky-500")
        + dep("r-ok", "ok")
        + dep("r-trickle", "trickle")
        + dep("r-limited-ms", "rate-limited-ms")
    )


@pytest.fixture(scope="module")
def gw(
    faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("routing"), _config(faulty.base_url)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> openai.OpenAI:
    key = gw.create_key("routing")["key"]
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def _health(gw: GatewayProcess) -> list[dict[str, object]]:
    req = urllib.request.Request(
        f"{gw.root_url}/admin/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return list(json.loads(resp.read())["data"])


def test_a_failing_deployment_is_skipped_once_its_breaker_opens(
    gw: GatewayProcess, client: openai.OpenAI, faulty: FaultyUpstream
) -> None:
    for _ in range(30):  # every request succeeds: the healthy deployment takes over
        reply = client.chat.completions.create(model="r-mixed", messages=MESSAGES)
        assert reply.choices[0].message.content == "".join(REPLY)
    row = next(r for r in _health(gw) if r["alias"] == "r-mixed" and r["index"] == 0)
    assert row["state"] == OPEN
    assert row["last_error"] == "upstream_error"
    sent_to_bad = len(faulty.models_seen("/chat/completions"))
    for _ in range(10):
        client.chat.completions.create(model="r-mixed", messages=MESSAGES)
    seen = faulty.models_seen("/chat/completions")[sent_to_bad:]
    assert seen.count("leaky-500") == 0 and seen.count("ok") == 10


def test_a_lone_failing_deployment_is_retried_once_then_the_client_hears_502(
    client: openai.OpenAI, faulty: FaultyUpstream
) -> None:
    before = faulty.models_seen("/chat/completions").count("leaky-500")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="r-single-500", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert faulty.models_seen("/chat/completions").count("leaky-500") - before == 2


def test_the_health_view_is_admin_only(gw: GatewayProcess) -> None:
    req = urllib.request.Request(f"{gw.root_url}/admin/health")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 401
    assert {r["alias"] for r in _health(gw)} >= {"r-mixed", "r-ok", "prometheus-core"}


@pytest.mark.parametrize("stream", [False, True])
def test_replies_say_where_the_time_went_and_pass_on_the_upstream_rate_limits(
    client: openai.OpenAI, stream: bool
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="r-ok", messages=MESSAGES, stream=stream
    )
    timing = raw.headers["server-timing"]
    parts = dict(p.strip().split(";", 1) for p in timing.split(","))
    assert set(parts) == {"gateway", "upstream", "deployment"}
    assert float(parts["gateway"].split("=")[1]) >= 0
    assert parts["deployment"] == 'desc="openai:ok"'
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-ratelimit-limit-requests"] == "100"


def test_a_client_that_leaves_gets_its_upstream_request_closed_within_100_ms(
    gw: GatewayProcess, faulty: FaultyUpstream
) -> None:
    key = gw.create_key("leaver")["key"]
    body = json.dumps({"model": "r-trickle", "messages": MESSAGES, "stream": True}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    before = len(faulty.hung_up)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        while b" more" not in received:  # the stream is flowing through the gateway
            received += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        left_at = time.monotonic()
    hung = wait_for(lambda: faulty.hung_up[before:], message="the upstream to see the hang-up")
    assert hung[0][0] == "trickle"
    assert hung[0][1] - left_at < 0.1


def test_a_short_retry_after_ms_is_waited_out_and_the_deployment_tried_again(
    client: openai.OpenAI, faulty: FaultyUpstream
) -> None:
    before = faulty.models_seen("/chat/completions").count("rate-limited-ms")
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="r-limited-ms", messages=MESSAGES)
    assert time.monotonic() - started >= 0.3  # it waited what the upstream asked
    assert faulty.models_seen("/chat/completions").count("rate-limited-ms") - before == 2
