"""The config file is validated at start against its JSON schema: a file that does
not fit makes `prometheus-gateway serve` exit 2 naming the field, never a
traceback; every config the README, the contract and the tests show still loads.

The schema ships inside the package (`proxy/config/config.schema.json`);
`schemas/config.schema.json` is a copy that must stay identical.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from gateway_process import SHARED, closed_port_url, free_port, gateway_config, gateway_env

from proxy.config.load import ConfigError, load_config
from proxy.config.validate import config_errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGED_SCHEMA = ROOT / "proxy" / "config" / "config.schema.json"
SCHEMA_COPY = ROOT / "schemas" / "config.schema.json"
CLI = Path(sys.executable).with_name("prometheus-gateway")

DEPLOYMENT = """
[[models.prometheus-core.deployments]]
provider = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key = "sk-upstream"
model = "gpt-4.1"
"""


def _serve(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "prometheus.toml"
    path.write_text(text)
    return subprocess.run(
        [str(CLI), "serve", "--config", str(path), "--port", str(free_port())],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


BAD_CONFIGS = {
    "port-wrong-type": (
        '[server]\nport = "8080"\n',
        "server.port: '8080' is not of type 'integer'",
    ),
    "unknown-provider": (
        DEPLOYMENT.replace('"openai"', '"azure"'),
        "models.prometheus-core.deployments[0].provider: 'azure' is not one of",
    ),
    "unknown-encoding": (
        DEPLOYMENT + 'encoding = "p50k_base"\n',
        "models.prometheus-core.deployments[0].encoding: 'p50k_base' is not one of",
    ),
    "negative-weight": (
        DEPLOYMENT + "weight = -1\n",
        "models.prometheus-core.deployments[0].weight: -1 is less than the minimum of 0",
    ),
    "unknown-kind": (
        '[models.my-alias]\nkind = "completion"\n[[models.my-alias.deployments]]\n'
        'provider = "sim"\n',
        "models.my-alias.kind: 'completion' is not one of",
    ),
    "top-level-typo": ("[sever]\nport = 9000\n", "sever: unknown field"),
    "deployment-key-typo": (
        DEPLOYMENT + "timeout = 5\n",
        "models.prometheus-core.deployments[0].timeout: unknown field",
    ),
    "bool-for-a-number": (
        DEPLOYMENT + "weight = true\n",
        "models.prometheus-core.deployments[0].weight: True is not of type 'number'",
    ),
    "no-provider": (
        '[[models.prometheus-core.deployments]]\nmodel = "gpt-4.1"\n',
        "models.prometheus-core.deployments[0].provider: required field missing",
    ),
    "no-deployment": (
        "[models.prometheus-core]\ndeployments = []\n",
        "models.prometheus-core.deployments: [] should be non-empty",
    ),
    "zero-workers": ("[server]\nworkers = 0\n", "server.workers: 0 is less than the minimum"),
    "port-out-of-range": ("[server]\nport = 70000\n", "server.port: 70000 is greater than"),
    "negative-price": (
        "[models.prometheus-core.price]\ninput_per_mtok = -0.5\n",
        "models.prometheus-core.price.input_per_mtok: -0.5 is less than the minimum of 0",
    ),
    "negative-drain": ("[server]\ndrain_s = -1\n", "server.drain_s: -1 is less than the minimum"),
    "zero-total-timeout": (
        DEPLOYMENT + "total_timeout_s = 0\n",
        "models.prometheus-core.deployments[0].total_timeout_s: 0 is less than or equal to",
    ),
    "storage-path-wrong-type": ("[storage]\npath = 3\n", "storage.path: 3 is not of type"),
    "alias-not-a-table": ('[models]\nprometheus-core = "gpt-4.1"\n', "models.prometheus-core:"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_exits_2_naming_the_field(tmp_path: Path, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    done = _serve(tmp_path, text)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert done.stderr.startswith("prometheus-gateway: config file ")
    assert "Traceback" not in done.stderr + done.stdout
    assert '"event":"listening"' not in done.stdout  # refused before anything started


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    done = _serve(tmp_path, '[server]\nport = "x"\nworkers = -2\n' + DEPLOYMENT + "weight = -3\n")
    assert done.returncode == 2
    for field in ("server.port:", "server.workers:", "deployments[0].weight:"):
        assert field in done.stderr


def test_an_anthropic_deployment_fits_the_schema_and_loads(tmp_path: Path) -> None:
    text = DEPLOYMENT.replace('"openai"', '"anthropic"')
    assert config_errors(tomllib.loads(text)) == []
    _loads_cleanly(text, tmp_path)


def test_an_unreadable_config_exits_2(tmp_path: Path) -> None:
    (tmp_path / "prometheus.toml").mkdir()  # a directory where the file should be
    done = subprocess.run(
        [str(CLI), "serve", "--config", str(tmp_path / "prometheus.toml")],
        cwd=tmp_path,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr


# -- configs that must keep loading ---------------------------------------------------------


def _toml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown.read_text(), flags=re.S)


def _loads_cleanly(text: str, tmp_path: Path) -> None:
    assert config_errors(tomllib.loads(text)) == []
    path = tmp_path / "prometheus.toml"
    path.write_text(text)
    load_config(str(path), env={"OPENAI_API_KEY": "sk-test"})


def test_the_readme_example_configs_load(tmp_path: Path) -> None:
    examples = _toml_blocks(ROOT / "README.md")
    assert examples, "the README shows no config"
    for example in examples:
        _loads_cleanly(example, tmp_path)


def test_the_contract_example_config_loads(tmp_path: Path) -> None:
    contract = SHARED / "CONTRACT.md"
    if not contract.is_file():
        pytest.skip(f"{contract} is absent")
    for example in _toml_blocks(contract):
        _loads_cleanly(example, tmp_path)


def test_the_test_gateways_configs_load(tmp_path: Path) -> None:
    _loads_cleanly(gateway_config(closed_port_url(), max_body_mb=0.5), tmp_path)
    _loads_cleanly('[storage]\npath = "gateway.db"\n', tmp_path)


def test_every_documented_field_and_the_new_ones_load(tmp_path: Path) -> None:
    """Each field README.md documents, and the ones other work adds ([server] drain_s,
    per-deployment upstream timeouts and caps), in one file that loads."""
    text = """
[server]
host = "127.0.0.1"
port = 8081
workers = 2
max_body_mb = 8.5
drain_s = 0

[storage]
path = "./usage.db"

[models.my-speech]
kind = "transcription"

[[models.my-speech.deployments]]
provider = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "OPENAI_API_KEY"
model = "whisper-1"
weight = 0
timeout_s = 30
first_byte_timeout_s = 5
total_timeout_s = 120.5
max_reply_mb = 16
max_event_kb = 256
encoding = "cl100k_base"

[[models.my-speech.deployments]]
provider = "sim"
ttft_ms = 0
tokens_per_second = 500

[models.my-speech.price]
input_per_mtok = 0
output_per_mtok = 0.5
audio_per_minute = 0.006
"""
    _loads_cleanly(text, tmp_path)
    readme = (ROOT / "README.md").read_text()
    schema = json.loads(PACKAGED_SCHEMA.read_text())
    route = schema["properties"]["models"]["additionalProperties"]["properties"]
    documented = {
        "server": ("host", "port", "workers", "max_body_mb"),
        "storage": ("path",),
        "model": ("kind", "deployments", "price"),
        "deployment": (
            "provider",
            "base_url",
            "api_key",
            "api_key_env",
            "model",
            "weight",
            "timeout_s",
            "encoding",
            "ttft_ms",
            "tokens_per_second",
        ),
        "price": ("input_per_mtok", "output_per_mtok", "audio_per_minute"),
    }
    in_schema = {
        "server": schema["properties"]["server"]["properties"],
        "storage": schema["properties"]["storage"]["properties"],
        "model": route,
        "deployment": route["deployments"]["items"]["properties"],
        "price": route["price"]["properties"],
    }
    for table, fields in documented.items():
        for field in fields:
            # two fields the loader reads are not (yet) named in README.md
            undocumented = field in ("kind", "audio_per_minute")
            assert undocumented or field in readme, f"README.md no longer names {field}"
            assert field in in_schema[table], f"the schema lacks {table} field {field}"


# -- the schema itself ---------------------------------------------------------------------


def test_the_schema_copy_in_schemas_is_the_packaged_one() -> None:
    assert SCHEMA_COPY.read_bytes() == PACKAGED_SCHEMA.read_bytes(), (
        "schemas/config.schema.json differs from proxy/config/config.schema.json: "
        "copy the packaged one over it"
    )


def test_the_installed_package_ships_the_schema() -> None:
    installed = resources.files("proxy.config").joinpath("config.schema.json")
    assert installed.read_bytes() == PACKAGED_SCHEMA.read_bytes()


def test_load_config_raises_config_error_for_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.toml"
    path.write_text(DEPLOYMENT + "weight = -1\n")
    with pytest.raises(ConfigError, match=re.escape("deployments[0].weight: -1 is less")):
        load_config(str(path), env={})
