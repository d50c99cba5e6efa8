"""Keys and auth that no input can break, and no secret in any answer or log.

- Bytes that are not UTF-8 in `Authorization` get a 401 in OpenAI's shape (never
  a 500), on `/v1` and on `/admin`.
- A new key's settings are checked the same way by `POST /admin/keys` and by
  `keys create`: out-of-range or mistyped `rpm`/`tpm`/`budget_usd`, an empty
  `models` list or an alias with a comma are refused (400 naming the param;
  exit 2 on the CLI) and no key is created.
- A flood of made-up keys costs the key table a handful of SQLite round trips
  (counted with the table's statement trace, `PROMETHEUS_DEBUG_KEY_TABLE_TRACE`),
  while a key created during the flood works on its first request; a repeated
  bad key is refused from memory; the negative cache is bounded.
- No plain key and no admin key in any response body, log line or file.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_process import ADMIN_KEY, GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import DEADLINE_S, wait_for

from proxy import storage
from proxy.auth import keys as keys_module
from proxy.auth.key_table import (
    MISS_RECHECK_S,
    POLL_INTERVAL_S,
    TRACE_ENV,
    UNKNOWN_CACHE_MAX,
    VERSION_SQL,
    KeyTable,
)

CHAT = json.dumps(
    {"model": "prometheus-lite", "messages": [{"role": "user", "content": "hello"}]}
).encode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes  # the whole response, head and body, as it came off the socket

    @property
    def body(self) -> Any:
        return json.loads(self.raw.partition(b"\r\n\r\n")[2])


class KeysGateway(GatewayProcess):
    """The module's gateway, with the key table's statement trace switched on."""

    @property
    def trace_path(self) -> Path:
        return self.workdir / "key-table.trace"

    def version_checks(self, since: float, until: float) -> int:
        """Version checks the key table ran between two `time.monotonic()` readings."""
        count = 0
        for line in self.trace_path.read_text().splitlines():
            stamp, _, sql = line.partition(" ")
            if since <= float(stamp) <= until and sql == VERSION_SQL:
                count += 1
        return count

    def key_count(self) -> int:
        return int(self.db_rows("SELECT COUNT(*) FROM api_keys")[0][0])


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysGateway]:
    workdir = tmp_path_factory.mktemp("keys-hardening")
    gateway = KeysGateway(
        workdir,
        gateway_config(upstream.base_url),
        env={TRACE_ENV: str(workdir / "key-table.trace")},
    )
    gateway.start()
    yield gateway
    gateway.stop()


def send(
    gw: GatewayProcess,
    method: str,
    path: str,
    authorization: bytes | None = None,
    body: bytes | None = None,
) -> Reply:
    """One request on its own connection, its header bytes exactly as given."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
    if authorization is not None:
        head += b"Authorization: " + authorization + b"\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=DEADLINE_S) as sock:
        sock.sendall(head + b"\r\n" + (body or b""))
        raw = b""
        while chunk := sock.recv(65536):  # Connection: close: the answer ends at EOF
            raw += chunk
    status_line, *header_lines = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, raw)


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def admin_post(gw: GatewayProcess, payload: bytes | dict[str, Any]) -> Reply:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return send(gw, "POST", "/admin/keys", bearer(ADMIN_KEY), body)


def assert_refusal(reply: Reply, status: int, code: str, param: str | None = None) -> None:
    assert reply.status == status, reply.raw
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["x-request-id"].startswith("req_")
    error = reply.body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    assert error["param"] == param


def made_up_key() -> str:
    return "prom_sk_" + secrets.token_urlsafe(32)


# -- bytes that are not UTF-8 in Authorization --------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer prom_sk_\xff\xfe" + b"A" * 41,
        b"Bearer prom_sk_" + b"A" * 40 + b"\xc3\x28",  # a broken two-byte sequence
        b"Bearer \x80\x81\x82",
        b"\xff\xfe",  # no scheme at all
    ],
)
def test_non_utf8_authorization_is_a_401_on_v1(gw: KeysGateway, authorization: bytes) -> None:
    for method, path, body in [
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
    ]:
        reply = send(gw, method, path, authorization, body)
        want = "missing_api_key" if not authorization.startswith(b"Bearer") else "invalid_api_key"
        assert_refusal(reply, 401, want)


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe\xfd",
        bearer(ADMIN_KEY) + b"\xff",
        b"Bearer " + ADMIN_KEY.encode()[:-1] + b"\xe9",
    ],
)
def test_non_utf8_authorization_is_a_401_on_admin(gw: KeysGateway, authorization: bytes) -> None:
    before = gw.key_count()
    assert_refusal(
        send(gw, "POST", "/admin/keys", authorization, b'{"name": "x"}'), 401, "invalid_admin_key"
    )
    assert_refusal(send(gw, "GET", "/admin/keys", authorization), 401, "invalid_admin_key")
    assert gw.key_count() == before


def test_non_utf8_keys_leave_no_traceback(gw: KeysGateway) -> None:
    rids = [
        send(gw, "GET", "/v1/models", b"Bearer prom_sk_\xff" + b"B" * 42).headers["x-request-id"],
        send(gw, "GET", "/admin/keys", b"Bearer \xff").headers["x-request-id"],
    ]
    lines = wait_for(
        lambda: [ln for rid in rids for ln in gw.log_lines_for(rid)] or None,
        message="the log lines of the non-UTF-8 requests",
    )
    assert [ln["status"] for ln in lines] == [401, 401]
    assert not [ln for ln in lines if ln.get("event") == "unhandled"]


# -- a new key's settings: admin API and CLI refuse the same values -------------

# (param, JSON value or raw JSON text, CLI arguments or None where the CLI has no such form)
REFUSED: list[tuple[str, Any, list[str] | None]] = [
    ("rpm", 2**63, ["--rpm", str(2**63)]),
    ("rpm", -1, ["--rpm", "-1"]),
    ("rpm", 1.5, ["--rpm", "1.5"]),
    ("rpm", "10", None),  # a string: "10" on the command line is the number
    ("rpm", True, None),
    ("rpm", 2**31, ["--rpm", str(2**31)]),
    ("tpm", 2**63, ["--tpm", str(2**63)]),
    ("tpm", -5, ["--tpm", "-5"]),
    ("budget_usd", "NaN", ["--budget-usd", "nan"]),
    ("budget_usd", "Infinity", ["--budget-usd", "inf"]),
    ("budget_usd", "1e400", ["--budget-usd", "1e400"]),
    ("budget_usd", -1, ["--budget-usd", "-1"]),
    ("budget_usd", "five", ["--budget-usd", "five"]),
    ("models", [], ["--models", ""]),
    ("models", ["a,b"], None),  # one alias with a comma would read back as two
    ("models", "", None),
    ("models", [""], ["--models", " "]),
    ("models", ["prometheus-lite", ""], ["--models", "prometheus-lite,,prometheus-core"]),
    ("models", [" prometheus-lite"], None),
    ("models", [1], None),
    ("models", {"prometheus-lite": True}, None),
    ("name", "", ["--name", ""]),
    ("name", 5, None),
]


def _json_body(param: str, value: Any) -> bytes:
    body = {"name": "refused"}
    if param == "budget_usd" and value in ("NaN", "Infinity", "1e400"):
        # not JSON a serializer writes, but what a client can send: raw number text
        return b'{"name": "refused", "budget_usd": ' + value.encode() + b"}"
    body[param] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(("param", "value", "cli_args"), REFUSED)
def test_admin_refuses_bad_settings(
    gw: KeysGateway, param: str, value: Any, cli_args: list[str] | None
) -> None:
    before = gw.key_count()
    reply = admin_post(gw, _json_body(param, value))
    assert_refusal(reply, 400, "invalid_value", param)
    assert gw.key_count() == before
    listed = send(gw, "GET", "/admin/keys", bearer(ADMIN_KEY)).body["data"]
    assert len(listed) == before


@pytest.mark.parametrize(
    ("param", "cli_args"), [(p, args) for p, _, args in REFUSED if args is not None]
)
def test_cli_refuses_bad_settings(gw: KeysGateway, param: str, cli_args: list[str]) -> None:
    before = gw.key_count()
    args = ["keys", "create", "--json", *cli_args]
    if param != "name":
        args += ["--name", "refused"]
    done = gw.cli(*args, check=False)
    assert done.returncode == 2, done
    flag = {"budget_usd": "--budget-usd"}.get(param, f"--{param}")
    assert f"argument {flag}:" in done.stderr and "must" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert gw.key_count() == before


def test_admin_missing_name_is_named(gw: KeysGateway) -> None:
    assert_refusal(admin_post(gw, {"rpm": 5}), 400, "missing_required_parameter", "name")


def test_admin_and_cli_store_the_same_settings(gw: KeysGateway) -> None:
    settings = {"rpm": 0, "tpm": 2**31 - 1, "budget_usd": 0, "models": ["prometheus-lite"]}
    by_admin = admin_post(gw, {"name": "same-admin", **settings}).body
    cli_args = ["--rpm", "0", "--tpm", str(2**31 - 1), "--budget-usd", "0"]
    cli_args += ["--models", " prometheus-lite , prometheus-lite"]  # spaces, a repeat
    by_cli = json.loads(gw.cli("keys", "create", "--name", "same-cli", "--json", *cli_args).stdout)
    rows = {r["id"]: r for r in send(gw, "GET", "/admin/keys", bearer(ADMIN_KEY)).body["data"]}
    for created in (by_admin, by_cli):
        row = rows[created["id"]]
        assert {k: row[k] for k in settings} == {**settings, "budget_usd": 0.0}
        # the restriction holds: the one alias is let through to the key's own limits
        # (rpm 0, budget 0: refused with 429 since limits are enforced), another is refused
        allowed = send(gw, "POST", "/v1/chat/completions", bearer(created["key"]), CHAT)
        assert allowed.status == 429
        other = CHAT.replace(b"prometheus-lite", b"prometheus-pulse")
        refused = send(gw, "POST", "/v1/chat/completions", bearer(created["key"]), other)
        assert_refusal(refused, 403, "model_not_allowed", "model")


# -- the key table under a flood of made-up keys ------------------------------


def test_a_flood_of_made_up_keys_costs_a_handful_of_checks(gw: KeysGateway) -> None:
    """2,000 distinct made-up keys (more if the key made meanwhile is slow to come)
    from 100 connections: the key table checks SQLite at most once per
    MISS_RECHECK_S, not once per key, and a key created by the CLI in the middle
    of the flood works on its very first request."""
    known = gw.create_key("known-before-the-flood")["key"]
    outcome = asyncio.run(_flood(gw, known, at_least=2000, connections=100))
    window = outcome.ended - outcome.began
    checks = gw.version_checks(outcome.began, outcome.ended)
    assert outcome.statuses == {401: outcome.sent}, outcome.statuses
    assert outcome.new_key_first_status == 200
    assert outcome.known_statuses == {200}
    allowed = window / MISS_RECHECK_S + 3
    assert checks <= allowed, (
        f"{outcome.sent} made-up keys in {window:.2f} s cost {checks} version checks;"
        f" at most {allowed:.0f} allowed (one per {MISS_RECHECK_S} s)"
    )
    assert checks * 5 <= outcome.sent, (checks, outcome.sent)


@dataclass
class FloodOutcome:
    began: float
    ended: float
    sent: int
    statuses: dict[int, int]
    new_key_first_status: int
    known_statuses: set[int]


async def _flood(gw: KeysGateway, known: str, at_least: int, connections: int) -> FloodOutcome:
    url = f"{gw.root_url}/v1/models"
    statuses: dict[int, int] = {}
    known_statuses: set[int] = set()
    sent = 0
    new_key_done = asyncio.Event()
    new_key_status: list[int] = []
    hard_stop = time.monotonic() + 60  # bounded however slow the machine is

    async def get(session: aiohttp.ClientSession, key: str) -> int:
        async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            return resp.status

    async def flooder(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while (sent < at_least or not new_key_done.is_set()) and time.monotonic() < hard_stop:
            sent += 1
            status = await get(session, made_up_key())
            statuses[status] = statuses.get(status, 0) + 1

    async def newcomer(session: aiohttp.ClientSession) -> None:
        try:
            while sent < at_least // 5:  # the flood is well under way
                await asyncio.sleep(0.01)
            created = await asyncio.to_thread(gw.create_key, "born-in-the-flood")
            new_key_status.append(await get(session, created["key"]))
            for _ in range(5):
                known_statuses.add(await get(session, known))
        finally:
            new_key_done.set()

    connector = aiohttp.TCPConnector(limit=connections + 1)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        await asyncio.gather(newcomer(session), *(flooder(session) for _ in range(connections)))
        ended = time.monotonic()
    return FloodOutcome(
        began, ended, sent, statuses, new_key_status[0] if new_key_status else 0, known_statuses
    )


def test_a_repeated_bad_key_is_refused_from_memory(gw: KeysGateway) -> None:
    """200 requests with one made-up key, one after the other: the first waits for a
    check, the rest are refused from the negative cache, with no check of their own."""
    bad = made_up_key()

    async def hammer() -> tuple[float, float, set[int]]:
        seen: set[int] = set()
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            for _ in range(200):
                headers = {"Authorization": f"Bearer {bad}"}
                async with session.get(f"{gw.root_url}/v1/models", headers=headers) as resp:
                    await resp.read()
                    seen.add(resp.status)
            return began, time.monotonic(), seen

    began, ended, seen = asyncio.run(hammer())
    assert seen == {401}
    checks = gw.version_checks(began, ended)
    # the first request's own check, and the poller's, which runs while nothing else does
    allowed = 1 + (ended - began) / POLL_INTERVAL_S + 2
    assert checks <= allowed, f"200 refusals in {ended - began:.2f} s cost {checks} checks"


async def test_the_negative_cache_is_bounded_and_emptied_by_a_change(tmp_path: Path) -> None:
    """In-process, on a real SQLite file: past UNKNOWN_CACHE_MAX refused keys the
    oldest is forgotten (it needs a check again), and a change of the key table
    empties the cache, so a refused digest is looked up again after it."""
    db_path = tmp_path / "keys.db"
    db = await storage.connect_async(db_path)
    statements: list[str] = []
    await db.set_trace_callback(statements.append)
    table = KeyTable(db)
    await table.refresh(force=True)  # no poller: every check below is a miss's

    def checks() -> int:
        return sum(1 for sql in statements if sql == VERSION_SQL)

    try:
        digests = [keys_module.hash_key(made_up_key()) for _ in range(UNKNOWN_CACHE_MAX + 50)]
        base = checks()
        found = await asyncio.gather(*(table.find_or_recheck(d) for d in digests))
        assert found == [None] * len(digests)
        assert checks() - base <= 2  # all those misses shared their checks
        base = checks()
        assert await table.find_or_recheck(digests[-1]) is None
        assert checks() == base  # remembered
        assert await table.find_or_recheck(digests[0]) is None
        assert checks() == base + 1  # forgotten: the cache holds UNKNOWN_CACHE_MAX at most

        conn = storage.connect(db_path)
        try:
            created = keys_module.create_key(conn, "arrives-later")
        finally:
            conn.close()
        # the change is seen on the next miss, which finds the new key at once
        info = await table.find_or_recheck(keys_module.hash_key(created["key"]))
        assert info is not None and info.id == created["id"]
        base = checks()
        assert await table.find_or_recheck(digests[-1]) is None
        assert checks() == base + 1  # the change emptied the cache
    finally:
        await table.stop()


# -- no key material in any answer, log line or file --------------------------


def test_no_key_material_in_any_answer_log_or_file(gw: KeysGateway) -> None:
    replies: list[Reply] = []
    outputs: list[str] = []

    def keep(reply: Reply) -> Reply:
        replies.append(reply)
        return reply

    by_cli = gw.cli("keys", "create", "--name", "secret-cli", "--json")
    cli_key = json.loads(by_cli.stdout)
    by_admin = keep(admin_post(gw, {"name": "secret-admin", "models": ["prometheus-lite"]}))
    admin_key = by_admin.body
    good = [cli_key["key"], admin_key["key"]]
    wrong_admin = ADMIN_KEY[:-4] + "oops"
    near_miss = good[0][:-1] + ("A" if good[0][-1] != "A" else "B")
    made_up = made_up_key()

    for key in good:  # good keys: chat (a usage row and a journal line), models
        assert keep(send(gw, "POST", "/v1/chat/completions", bearer(key), CHAT)).status == 200
        assert keep(send(gw, "GET", "/v1/models", bearer(key))).status == 200
    for key in (near_miss, made_up, good[0] + "x"):
        assert keep(send(gw, "GET", "/v1/models", bearer(key))).status == 401
    # a key pasted where an id belongs, over HTTP and on the CLI: refused, not echoed
    refused = keep(send(gw, "POST", f"/admin/keys/{good[1]}/revoke", bearer(ADMIN_KEY)))
    assert_refusal(refused, 400, "invalid_value", "key_id")
    cli_revoke = gw.cli("keys", "revoke", good[0], check=False)
    assert cli_revoke.returncode == 2
    outputs += [cli_revoke.stdout, cli_revoke.stderr]
    # a key pasted into a field, and into a URL
    keep(admin_post(gw, {"name": "x", "models": [good[0]], "rpm": good[1]}))
    keep(send(gw, "GET", f"/v1/{good[0]}", bearer(good[1])))
    # (an unknown model's 404 names the model, as OpenAI's does, so it goes back to the
    # client who sent it: only its log line is checked)
    echoed = send(gw, "GET", f"/v1/models/{good[0]}", bearer(good[1]))
    assert echoed.status == 404
    # revocation, then the revoked keys
    revoked = keep(send(gw, "POST", f"/admin/keys/{admin_key['id']}/revoke", bearer(ADMIN_KEY)))
    assert revoked.status == 200
    revoke_cli = gw.cli("keys", "revoke", cli_key["id"])
    outputs += [revoke_cli.stdout, revoke_cli.stderr]
    for key in good:
        wait_for(
            lambda key=key: keep(send(gw, "GET", "/v1/models", bearer(key))).status == 401,
            message="the revoked key refused",
        )
    # the admin API with wrong keys, and the listings
    for wrong in (wrong_admin, good[0]):
        assert keep(send(gw, "GET", "/admin/keys", bearer(wrong))).status == 401
        assert keep(admin_post_with(gw, wrong, {"name": "x"})).status == 401
    assert keep(send(gw, "GET", "/admin/keys", bearer(ADMIN_KEY))).status == 200
    assert keep(send(gw, "GET", "/admin/usage", bearer(ADMIN_KEY))).status == 200
    for args in (["keys", "list"], ["keys", "list", "--json"], ["usage", "--json"]):
        done = gw.cli(*args)
        outputs += [done.stdout, done.stderr]

    secrets_ = {
        "the admin key": ADMIN_KEY,
        "a wrong admin key": wrong_admin,
        "the near miss": near_miss,
        "a made-up key": made_up,
    }
    for i, key in enumerate(good):
        secrets_[f"key {i}"] = key
        # what `keys list` may show is the prefix and 4 characters: nothing past them
        secrets_[f"key {i}'s hidden part"] = key[len("prom_sk_") + 4 :]
    creations = {by_admin.raw}
    for reply in replies:
        if reply.raw in creations:
            assert admin_key["key"] in reply.raw.decode()  # the one place it is shown
            continue
        for what, secret in secrets_.items():
            assert secret.encode() not in reply.raw, f"{what} in an answer: {reply.raw[:300]!r}"
    for text in outputs:
        for what, secret in secrets_.items():
            assert secret not in text, f"{what} in CLI output: {text[:300]!r}"
    rids = [r.headers["x-request-id"] for r in [*replies, echoed]]
    wait_for(
        lambda: all(gw.log_lines_for(rid) for rid in rids),
        message="every request's log line",
    )
    sql = "SELECT COUNT(*) FROM requests WHERE key_id IN (?, ?)"
    wait_for(
        lambda: gw.db_rows(sql, cli_key["id"], admin_key["id"])[0][0] >= 2,
        message="the chat requests' usage rows in SQLite",
    )
    files = [p for p in gw.workdir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "gateway.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for what, secret in secrets_.items():
            assert secret.encode() not in data, f"{what} in {path.name}"


def admin_post_with(gw: GatewayProcess, key: str, payload: dict[str, Any]) -> Reply:
    return send(gw, "POST", "/admin/keys", bearer(key), json.dumps(payload).encode())
