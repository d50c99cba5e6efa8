"""Run the installed gateway as a real process, and its CLI, for the tests.

`GatewayProcess` writes a config file into a temp dir, starts
`python -m proxy serve` there (the installed package, not the source tree:
the working directory is the temp dir), waits for `/healthz`, and keeps its
stdout (the JSON log lines) in a file the tests can read. `cli()` runs any
`prometheus-gateway` subcommand against the same config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from upstream_app import UPSTREAM_KEY
from waiting import wait_for

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
ADMIN_KEY = "prom_admin_test_secret_value_0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL where nothing listens: an upstream that is down."""
    return f"http://127.0.0.1:{free_port()}/v1"


def gateway_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "PROMETHEUS_"))
    }
    env["PROMETHEUS_ADMIN_KEY"] = ADMIN_KEY
    env.update(extra or {})
    return env


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        config_text: str | None,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config: Path | None = None
        # gateway_config() names the database gateway.db; with no config file the
        # gateway uses its default, ./prometheus.db (the workdir is its cwd)
        self.db_path = workdir / ("gateway.db" if config_text is not None else "prometheus.db")
        if config_text is not None:
            self.config = workdir / "prometheus.toml"
            self.config.write_text(config_text)
        self.port = free_port()
        self.workers = workers
        self.env = gateway_env(env)
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config_args(self) -> list[str]:
        return ["--config", str(self.config)] if self.config else []

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        cmd = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            *self._config_args(),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            wait_for(self._healthy, timeout=timeout, message="the gateway's /healthz")
        except AssertionError as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.log_text()}") from None
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited at start:\n{self.log_text()}")
        try:
            with urllib.request.urlopen(f"{self.root_url}/healthz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole gateway (the parent and any forked workers)."""
        if self.proc is None:
            return
        children = _children(self.proc.pid)
        self.proc.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def log_lines_for(self, request_id: str) -> list[dict[str, Any]]:
        return [ln for ln in self.log_lines() if ln.get("request_id") == request_id]

    def mapped_files(self) -> set[str]:
        """Files mapped into the gateway's processes (itself and its workers), from
        /proc/PID/maps: shows which compiled modules the running gateway loaded."""
        assert self.proc is not None and self.proc.poll() is None, "the gateway is not running"
        files: set[str] = set()
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue  # a worker that just exited
            for line in maps.splitlines():
                fields = line.split(None, 5)  # address perms offset dev inode [path]
                if len(fields) == 6 and fields[5].startswith("/"):
                    files.add(fields[5])
        return files

    # -- CLI ---------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "proxy", *args, *self._config_args()]
        done = subprocess.run(
            cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def create_key(self, name: str, models: str | None = None) -> dict[str, Any]:
        args = ["keys", "create", "--name", name, "--json"]
        if models:
            args += ["--models", models]
        return dict(json.loads(self.cli(*args).stdout))

    def usage(self, key_id: str | None = None, by: str = "day") -> list[dict[str, Any]]:
        args = ["usage", "--json", "--by", by]
        if key_id:
            args += ["--key-id", key_id]
        return list(json.loads(self.cli(*args).stdout))

    def db_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of the gateway's own SQLite file (`db_path`)."""
        conn = sqlite3.connect(self.db_path, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@contextmanager
def running_gateway(
    workdir: Path, config_text: str | None, **kwargs: Any
) -> Iterator[GatewayProcess]:
    """A started gateway, stopped on the way out (for module-scoped fixtures)."""
    gateway = GatewayProcess(workdir, config_text, **kwargs)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _openai_deployment(alias: str, base_url: str, model: str, extra: str = "") -> str:
    return f"""
[[models.{alias}.deployments]]
provider = "openai"
base_url = "{base_url}"
api_key = "{UPSTREAM_KEY}"
model = "{model}"
{extra}"""


def gateway_config(upstream_url: str, *, max_body_mb: float = 1) -> str:
    """The test gateway's config; its database is `gateway.db` (see `db_rows`)."""
    return (
        f"""
[server]
max_body_mb = {max_body_mb}

[storage]
path = "gateway.db"
"""
        + "".join(
            [
                _openai_deployment("prometheus-lite", upstream_url, "up-lite"),
                _openai_deployment("prometheus-core", upstream_url, "up-core"),
                _openai_deployment("prometheus-atlas", upstream_url, "up-embed"),
                _openai_deployment(
                    "prometheus-surge", closed_port_url(), "up-surge", "timeout_s = 5\n"
                ),
                _openai_deployment("team-custom", upstream_url, "up-custom"),
            ]
        )
        + """
[[models.prometheus-pulse.deployments]]
provider = "sim"
ttft_ms = 5
tokens_per_second = 2000

[models.team-custom.price]
input_per_mtok = 2.0
output_per_mtok = 8.0
"""
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found
