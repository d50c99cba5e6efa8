"""Keys on a running gateway: new keys work at once, revoked keys stop within 1 s on
every worker, and a plain key is never stored nor logged."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import assert_holds_within, wait_for


@pytest.fixture(scope="module")
def two_workers(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("keys"), gateway_config(upstream.base_url), workers=2
    )
    gw.start()
    yield gw
    gw.stop()


def answer_of(gw: GatewayProcess, key: str) -> tuple[int, dict[str, Any], str]:
    """One request on a new connection (so the kernel spreads them over the workers):
    its status, JSON body and x-request-id."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.headers["x-request-id"]
    finally:
        conn.close()


def status_of(gw: GatewayProcess, key: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = answer_of(gw, key)
    return status, body


def test_new_key_works_at_once_on_every_worker(two_workers: GatewayProcess) -> None:
    for i in range(3):
        created = two_workers.create_key(f"instant-{i}")
        statuses = {status_of(two_workers, created["key"])[0] for _ in range(12)}
        assert statuses == {200}


def test_revoked_key_stops_within_one_second_on_every_worker(two_workers: GatewayProcess) -> None:
    created = two_workers.create_key("soon-revoked")
    for _ in range(12):  # both workers have seen (and cached) the key
        assert status_of(two_workers, created["key"])[0] == 200
    two_workers.cli("keys", "revoke", created["id"])
    revoked_at = time.monotonic()  # the CLI has committed the revocation when it returns

    def refused_everywhere() -> list[tuple[int, dict[str, Any]]] | None:
        # 16 new connections: both workers answer some (all on one: p = 2 * 2**-16)
        answers = [status_of(two_workers, created["key"]) for _ in range(16)]
        return answers if all(status != 200 for status, _ in answers) else None

    assert_holds_within(
        refused_everywhere,
        since=revoked_at,
        promised_s=1.0,
        message="the revoked key refused by every worker",
    )
    # and it stays refused, with the contract's answer
    answers = [status_of(two_workers, created["key"]) for _ in range(16)]
    assert {s for s, _ in answers} == {401}
    assert {b["error"]["code"] for _, b in answers} == {"revoked_api_key"}
    listed = json.loads(two_workers.cli("keys", "list", "--json").stdout)
    assert [k["revoked"] for k in listed if k["id"] == created["id"]] == [True]


def test_keys_are_stored_hashed_and_never_logged(two_workers: GatewayProcess) -> None:
    created = two_workers.create_key("secret-holder")
    plain = created["key"]
    assert plain.startswith("prom_sk_") and len(plain) >= len("prom_sk_") + 32
    rids = [
        answer_of(two_workers, plain)[2],
        answer_of(two_workers, plain[:-1] + ("A" if plain[-1] != "A" else "B"))[2],
    ]  # wrong
    two_workers.cli("keys", "list")
    two_workers.cli("usage")
    # both requests are logged (lines leave in batches) before the files are searched
    wait_for(
        lambda: all(two_workers.log_lines_for(rid) for rid in rids),
        message=f"the log lines of {rids}",
    )
    secret = plain[len("prom_sk_") :].encode()
    for path in Path(two_workers.workdir).rglob("*"):
        if path.is_file():
            assert secret[:24] not in path.read_bytes(), f"key material in {path}"
    assert plain not in two_workers.cli("keys", "list", "--json").stdout
