"""The real PostgreSQL the cluster tests ship into, one fresh database per test.

`pg_dsn` (a fixture) creates `test_<random>` on 127.0.0.1:5432 (trust auth,
user postgres, else root), yields its DSN and drops it after, closing
whatever is still connected. Where no PostgreSQL answers, the test is
skipped saying so; under CI (`CI=true`) it fails instead: `.ci/run` starts
PostgreSQL first (`make test` runs `deploy/ci/postgres-ready.sh`), so an
unreachable server there is a broken machine, not a reason to skip.

`ShipProcess` runs the installed sidecar (`python -m proxy ship`) like
`gateway_process.GatewayProcess` runs the gateway.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from gateway_process import gateway_env

PG_HOST, PG_PORT = "127.0.0.1", 5432
USERS = ("postgres", "root")


def _dsn(user: str, db: str) -> str:
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{db}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _admin() -> tuple[asyncpg.Connection, str]:
    last: BaseException | None = None
    for user in USERS:
        try:
            return await asyncpg.connect(_dsn(user, "postgres"), timeout=5), user
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            last = exc
    raise ConnectionError(f"no PostgreSQL on {PG_HOST}:{PG_PORT}: {last}")


async def _create() -> str:
    conn, user = await _admin()
    name = "test_" + secrets.token_hex(6)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _dsn(user, name)


async def _drop(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn, _ = await _admin()
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


@pytest.fixture()
def pg_dsn() -> Iterator[str]:
    try:
        dsn = run(_create())
    except ConnectionError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs PostgreSQL for this test: {exc}")
        pytest.skip(f"PostgreSQL is not reachable here: {exc}")
    try:
        yield dsn
    finally:
        run(_drop(dsn))


def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return list(run(go()))


def table_exists(dsn: str, table: str) -> bool:
    return bool(fetch(dsn, "SELECT to_regclass($1) IS NOT NULL AS ok", table)[0]["ok"])


def ledger_count(dsn: str) -> int:
    if not table_exists(dsn, "usage_requests"):
        return 0
    return int(fetch(dsn, "SELECT count(*) AS n FROM usage_requests")[0]["n"])


def ship_config(dsn: str = "", http_url: str = "", node_id: str = "node-a", **extra: Any) -> str:
    lines = ["\n[ship]", f'node_id = "{node_id}"', "interval_s = 0.1"]
    if dsn:
        lines.append(f'postgres_dsn = "{dsn}"')
    if http_url:
        lines.append(f'http_url = "{http_url}"')
    lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines).replace("'", '"') + "\n"


class ShipProcess:
    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.log_path = workdir / f"ship-{secrets.token_hex(3)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "proxy", "ship", "--config", str(self.config), *extra]

    def start(self) -> ShipProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=gateway_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def once(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command("--once"),
            cwd=self.workdir,
            env=gateway_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
