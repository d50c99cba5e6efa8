"""A new user's first minutes: the gateway with no config and no credentials, the
console script, the standalone simulator, and how config and env are read."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gateway_process import GatewayProcess, free_port, gateway_env
from waiting import assert_holds_within, wait_for

from proxy.config.load import ConfigError, load_config

ALIASES = (
    "prometheus-spark",
    "prometheus-lite",
    "prometheus-core",
    "prometheus-vision",
    "prometheus-pulse",
    "prometheus-surge",
    "prometheus-atlas",
    "prometheus-echo",
)
CHAT_ALIASES = ALIASES[:6]


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("defaults"), None)  # no config file at all
    gw.start()
    yield gw
    gw.stop()


def test_default_startup_says_the_simulator_serves_everything(
    default_gateway: GatewayProcess,
) -> None:
    startup = [ln for ln in default_gateway.log_lines() if ln.get("event") == "startup"]
    assert len(startup) == 1
    assert "simulator" in startup[0]["message"] and "8 aliases" in startup[0]["message"]
    assert (default_gateway.workdir / "prometheus.db").exists()


def test_default_gateway_serves_all_aliases_with_the_sdk(default_gateway: GatewayProcess) -> None:
    key = default_gateway.create_key("demo")["key"]
    client = openai.OpenAI(base_url=default_gateway.base_url, api_key=key, max_retries=0)
    assert sorted(m.id for m in client.models.list()) == sorted(ALIASES)
    for alias in CHAT_ALIASES:
        reply = client.chat.completions.create(
            model=alias, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == alias and reply.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model=alias, max_tokens=4, stream=True, messages=[{"role": "user", "content": "hi"}]
            )
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == reply.choices[0].message.content
        )
    emb = client.embeddings.create(model="prometheus-atlas", input=["a", "b c"], dimensions=64)
    assert [len(d.embedding) for d in emb.data] == [64, 64]
    again = client.embeddings.create(model="prometheus-atlas", input=["a", "b c"], dimensions=64)
    assert again.data[1].embedding == emb.data[1].embedding  # deterministic
    assert emb.usage.prompt_tokens > 0


def test_usage_shows_the_key_within_two_seconds(default_gateway: GatewayProcess) -> None:
    created = default_gateway.create_key("usage-demo")
    client = openai.OpenAI(base_url=default_gateway.base_url, api_key=created["key"], max_retries=0)
    for _ in client.chat.completions.create(
        model="prometheus-pulse",
        max_tokens=8,
        stream=True,
        messages=[{"role": "user", "content": "hi"}],
    ):
        pass
    ended = time.monotonic()
    # `usage` reads these SQLite rows; they are probed directly to time the promise,
    # since one `usage` run (a new interpreter) can take a good part of the 2 s itself
    assert_holds_within(
        lambda: default_gateway.db_rows(
            "SELECT request_id FROM requests WHERE key_id = ?", created["id"]
        ),
        since=ended,
        promised_s=2.0,
        message="the request's usage row in SQLite",
    )
    rows = default_gateway.usage(created["id"])
    assert len(rows) == 1
    row = rows[0]
    assert row["requests"] == 1 and row["output_tokens"] == 8
    assert row["cost_usd"] > 0 and row["latency_ms_p50"] > 0 and row["ttft_ms_p50"] > 0
    table = default_gateway.cli("usage").stdout
    assert created["id"] in table and "prometheus-pulse" in table


def test_console_script_is_installed_and_prints_a_key(tmp_path: Path) -> None:
    script = shutil.which("prometheus-gateway", path=str(Path(sys.executable).parent))
    assert script, "the console script is not installed next to the interpreter"
    done = subprocess.run(
        [script, "keys", "create", "--name", "demo"],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert re.fullmatch(r"prom_sk_[A-Za-z0-9_-]{32,}", key), key


def test_standalone_simulator_is_an_openai_upstream(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "sim",
            "--port",
            str(port),
            "--ttft-ms",
            "20",
            "--tokens-per-second",
            "500",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(answers, timeout=30, message="the simulator to answer /v1/models")
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="anything",
            max_tokens=25,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello"}],
        )
        chunks = list(stream)
        elapsed = time.monotonic() - started
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 25
        assert elapsed >= 0.02 + 24 / 500 * 0.8  # paced: TTFT plus tokens at the given rate
        emb = client.embeddings.create(
            model="x", input="hi", dimensions=16, encoding_format="base64"
        )
        raw = base64.b64decode(emb.data[0].embedding)  # type: ignore[arg-type]
        assert len(struct.unpack("<16f", raw)) == 16
    finally:
        proc.terminate()
        proc.wait(10)


# -- config and environment, read the way `serve` reads them -----------------------------


def test_openai_key_in_env_switches_defaults_to_openai(tmp_path: Path) -> None:
    cfg = load_config(None, env={"OPENAI_API_KEY": "sk-live", "PWD": str(tmp_path)})
    core = cfg.routes["prometheus-core"].deployments[0]
    assert core.provider == "openai" and core.api_key == "sk-live"
    assert core.base_url == "https://api.openai.com/v1"
    assert not cfg.all_simulated()
    cfg = load_config(None, env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert cfg.routes["prometheus-lite"].deployments[0].base_url == "http://127.0.0.1:9/v1"
    assert load_config(None, env={}).all_simulated()


def test_config_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text("""
[server]
port = 9191

[storage]
path = "data/usage.db"

[[models.prometheus-core.deployments]]
provider = "openai"
base_url = "http://127.0.0.1:9000/v1/"
api_key_env = "MY_UPSTREAM_KEY"
model = "gpt-4.1"

[models.prometheus-core.price]
input_per_mtok = 1.5
output_per_mtok = 6.0

[[models.my-alias.deployments]]
provider = "sim"
""")
    cfg = load_config(None, env={"PROMETHEUS_CONFIG": str(path), "MY_UPSTREAM_KEY": "sk-env"})
    assert cfg.port == 9191
    assert cfg.db_path == (tmp_path / "data" / "usage.db").resolve()
    core = cfg.routes["prometheus-core"]
    assert core.deployments[0].api_key == "sk-env"
    assert core.deployments[0].base_url == "http://127.0.0.1:9000/v1"
    assert core.price.cost(1_000_000, 1_000_000) == pytest.approx(7.5)
    assert cfg.routes["prometheus-lite"].deployments[0].provider == "sim"  # untouched default
    assert cfg.routes["prometheus-lite"].price.cost(1_000_000, 1_000_000) == pytest.approx(0.5)
    assert cfg.routes["my-alias"].price.cost(10**9, 10**9) == 0
    assert any("my-alias" in w and "costs 0" in w for w in cfg.warnings)


@pytest.mark.parametrize(
    "text",
    [
        "[[models.prometheus-core.deployments]]\nprovider = 'nope'\n",
        "[[models.prometheus-core.deployments]]\nprovider = 'openai'\n",  # no base_url
        "[models.new-alias]\nkind = 'chat'\n",  # a new alias without deployments
        "this is = not toml [",
    ],
)
def test_bad_config_is_refused_clearly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(str(path), env={})
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(free_port())],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "prometheus-gateway:" in done.stderr and "Traceback" not in done.stderr


def test_admin_api_is_off_without_an_admin_key(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "no-admin", None)
    del gw.env["PROMETHEUS_ADMIN_KEY"]
    gw.start()
    try:
        req = urllib.request.Request(
            f"{gw.root_url}/admin/keys", method="GET", headers={"Authorization": "Bearer anything"}
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 403
        body = json.loads(info.value.read())
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert gw.create_key("cli-still-works")["key"].startswith("prom_sk_")
    finally:
        gw.stop()
