"""Hedged first token: a stream whose first deployment is slow to speak is raced
on the next, the first to speak wins, the other is hung up on at once, and the
key is billed once.

Two deployments on `faulty_upstream`: one whose first token takes
`SLOW_FIRST_TOKEN_S` (weighted to be tried first) and a fast one. The fake
upstream runs in this process, so its record of when the gateway hung up and
the client's first token are read on one clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from faulty_upstream import REPLY, SLOW_FIRST_TOKEN_S, FaultyUpstream
from gateway_process import GatewayProcess, running_gateway
from waiting import wait_for

MESSAGES = [{"role": "user", "content": "hello"}]
HEDGE_MS = 200


def _dep(alias: str, base_url: str, model: str, weight: float) -> str:
    return (
        f'\n[[models.{alias}.deployments]]\nprovider = "openai"\nbase_url = "{base_url}"\n'
        f'model = "{model}"\nweight = {weight}\n'
    )


def _config(base_url: str) -> str:
    text = '[storage]\npath = "gateway.db"\n'
    text += f"\n[models.h-race]\nhedge_ms = {HEDGE_MS}\n"
    text += _dep("h-race", base_url, "slow-first-token", 1e6)
    text += _dep("h-race", base_url, "fast-b", 1e-6)
    text += f"\n[models.h-fast]\nhedge_ms = {HEDGE_MS}\n"
    text += _dep("h-fast", base_url, "fast-c", 1)
    text += _dep("h-fast", base_url, "fast-d", 1)
    return text


@pytest.fixture(scope="module")
def gw(
    faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("hedging"), _config(faulty.base_url)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> dict[str, str]:
    return gw.create_key("hedging")


def _stream(gw: GatewayProcess, key: str, alias: str) -> tuple[float, float, str, str]:
    """(seconds to the first content, the moment it came, the text, the request id)."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=alias, messages=MESSAGES, stream=True
    )
    first_at, text = 0.0, ""
    for chunk in raw.parse():
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece and not first_at:
            first_at = time.monotonic()
        text += piece or ""
    return first_at - started, first_at, text, raw.headers["x-request-id"]


def test_a_slow_first_token_is_hedged_and_the_fast_deployment_wins(
    gw: GatewayProcess, key: dict[str, str], faulty: FaultyUpstream
) -> None:
    ttft, first_at, text, rid = _stream(gw, key["key"], "h-race")
    assert text == "".join(REPLY)
    # the slow deployment would have taken SLOW_FIRST_TOKEN_S; the hedge starts at HEDGE_MS
    assert ttft < SLOW_FIRST_TOKEN_S * 0.8, f"TTFT {ttft:.3f} s did not follow the fast one"
    hung = wait_for(lambda: [t for m, t in faulty.hung_up if m == "slow-first-token"])
    assert hung[-1] - first_at < 0.1, "the slow deployment was not hung up on within 100 ms"
    rows = wait_for(
        lambda: (
            gw.db_rows(
                "SELECT request_id, key_id, status, deployment, error FROM requests "
                "WHERE request_id LIKE ?",
                rid + "%",
            )
            if len(gw.db_rows("SELECT 1 FROM requests WHERE request_id LIKE ?", rid + "%")) == 2
            else None
        ),
        message="the winner's and the loser's records",
    )
    billed = [r for r in rows if r[1] == key["id"]]
    assert [(r[0], r[2], r[3]) for r in billed] == [(rid, 200, "openai:fast-b")]
    overhead = [r for r in rows if r[1] != key["id"]]
    assert [(r[1], r[3], r[4]) for r in overhead] == [
        ("gateway:hedge", "openai:slow-first-token", "hedge_lost")
    ]


def test_two_fast_deployments_send_no_hedge(
    gw: GatewayProcess, key: dict[str, str], faulty: FaultyUpstream
) -> None:
    before = len([m for _, m in faulty.seen if m in ("fast-c", "fast-d")])
    for _ in range(5):
        ttft, _, text, _ = _stream(gw, key["key"], "h-fast")
        assert text == "".join(REPLY)
    after = len([m for _, m in faulty.seen if m in ("fast-c", "fast-d")])
    assert after - before == 5
