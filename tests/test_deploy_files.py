"""The files in `deploy/` name things that exist: every command parses with the
CLI, every config file passes the config schema, every port is the one the
config serves on, every probe asks a route the gateway (or the sidecar)
answers, every environment variable is read by the code or named by the
config (`*_env`), and the Dockerfile builds the way the README installs.
No image is built here: the files are read and checked."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from proxy.cli import build_parser
from proxy.config.load import load_config
from proxy.config.model import GatewayConfig
from proxy.server.app import add_routes

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SOURCE = "\n".join(p.read_text() for p in (ROOT / "proxy").rglob("*.py"))
FAKE_ENV = {"PROMETHEUS_PG_DSN": "postgresql://u@db:5432/p"}


def gateway_routes() -> set[str]:
    app = web.Application()
    add_routes(app)
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def parses(argv: list[str]) -> Any:
    assert argv[0] == "prometheus-gateway" or argv[0].endswith("/prometheus-gateway"), argv
    return build_parser().parse_args(argv[1:])  # exits (fails the test) if it does not


def config_from(text: str, tmp_path: Path, name: str) -> GatewayConfig:
    path = tmp_path / name
    path.write_text(text)
    return load_config(str(path), env=dict(FAKE_ENV))


def env_names_read(text: str) -> set[str]:
    """Environment variables a config file names (`..._env = "NAME"`)."""
    return set(re.findall(r'_env\s*=\s*"([A-Z0-9_]+)"', text))


def assert_env_known(names: set[str], config_text: str) -> None:
    named = env_names_read(config_text)
    unknown = {n for n in names if n not in named and f'"{n}"' not in SOURCE}
    assert unknown == set(), f"environment variables nothing reads: {unknown}"


def test_compose(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-a", "gateway-b", "ship-a", "ship-b", "postgres", "redis"} <= set(services)
    routes = gateway_routes()
    for node in ("a", "b"):
        config_text = (DEPLOY / "config" / f"node-{node}.toml").read_text()
        config = config_from(config_text, tmp_path, f"node-{node}.toml")
        assert config.ship.node_id == f"node-{node}" and config.ship.postgres_dsn
        assert config.cluster_dsn
        gw, ship = services[f"gateway-{node}"], services[f"ship-{node}"]
        assert parses(gw["command"]).command == "serve"
        ship_args = parses(ship["command"])
        assert ship_args.command == "ship" and not ship_args.once
        # the mounted config is the file checked above, in both containers
        mount = f"./config/node-{node}.toml:{gw['command'][-1]}:ro"
        assert mount in gw["volumes"] and mount in ship["volumes"]
        # the same data volume, at the folder of the configured database
        data = [v for v in gw["volumes"] if not v.startswith("./")]
        assert data == [v for v in ship["volumes"] if not v.startswith("./")]
        assert data[0].split(":")[1] == str(config.db_path.parent)
        assert gw["ports"][0].split(":")[1] == str(config.port)
        assert ship["ports"][0].split(":")[1] == str(config.ship.metrics_port)
        health = " ".join(gw["healthcheck"]["test"])
        assert f"127.0.0.1:{config.port}/healthz" in health and "/healthz" in routes
        assert f"127.0.0.1:{config.ship.metrics_port}/metrics" in " ".join(
            ship["healthcheck"]["test"]
        )
        for service in (gw, ship):
            assert service["environment"]["PROMETHEUS_CONFIG"] == gw["command"][-1]
            assert_env_known(set(service["environment"]), config_text)


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_kubernetes(tmp_path: Path) -> None:
    docs = k8s_docs()
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
    } <= set(docs)
    config_text = docs["ConfigMap"]["data"]["prometheus.toml"]
    config = config_from(config_text, tmp_path, "k8s.toml")
    drain_s = float(re.search(r"drain_s\s*=\s*([0-9.]+)", config_text).group(1))  # type: ignore[union-attr]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    gw, ship = containers["gateway"], containers["ship"]
    assert parses(gw["command"]).command == "serve"
    assert parses(ship["command"]).command == "ship"
    # the gateway's port and probes
    (port,) = gw["ports"]
    assert port["containerPort"] == config.port
    for probe in ("readinessProbe", "livenessProbe"):
        get = gw[probe]["httpGet"]
        assert get["path"] in gateway_routes() and get["port"] == port["name"]
    (ship_port,) = ship["ports"]
    assert ship_port["containerPort"] == config.ship.metrics_port
    assert ship["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": ship_port["name"]}
    # graceful termination covers the drain, and the sidecar outwaits the gateway
    grace = pod["terminationGracePeriodSeconds"]
    sidecar_wait = float(ship["lifecycle"]["preStop"]["exec"]["command"][1])
    assert drain_s < sidecar_wait < grace
    # both containers share the volume holding the configured database
    for c in (gw, ship):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["data"] == str(config.db_path.parent)
        assert mounts["config"] + "/prometheus.toml" == c["command"][-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # env vars: the Secret's keys and each container's own
    secret_keys = set(docs["Secret"]["stringData"])
    assert_env_known(secret_keys, config_text)
    for c in (gw, ship):
        assert_env_known({e["name"] for e in c.get("env", [])}, config_text)
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref["key"] in secret_keys
    # the Service and the autoscaler point at what exists
    names = {p["name"] for c in (gw, ship) for p in c["ports"]}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= names
    assert (
        docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        docs["Deployment"]["metadata"]["name"],
    )


def dockerfile_runs() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


def normalised(command: str) -> str:
    """A command without its options and paths: `/opt/x/bin/pip install -q .`
    and `pip install .` are the same step."""
    words = [w.rsplit("/", 1)[-1] for w in shlex.split(command) if not w.startswith("-")]
    return " ".join(w for w in words if w not in ("python", "python3"))


def test_dockerfile_builds_as_the_readme_installs() -> None:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.findall(r"^FROM .*$", text, re.M)
    assert len(stages) == 2 and " AS builder" in stages[0]
    builder, runtime = text.split("\nFROM ", 2)[1:]
    assert "gcc" in builder and "gcc" not in runtime  # the Cython build, in the builder only
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert "/healthz" in re.search(r"^HEALTHCHECK .*$", runtime, re.M).group(0)  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", runtime, re.M).group(1))  # type: ignore[union-attr]
    args = parses(cmd)
    assert args.command == "serve" and re.search(rf"^EXPOSE {args.port}$", runtime, re.M)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From one machine to a cluster", 1)[1].split("\n## ", 1)[0]
    steps = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if "pip install" in line or " -m venv" in line
    ]
    assert any("pip install" in s for s in steps)
    built = {normalised(r) for run in dockerfile_runs() for r in run.split("&&")}
    assert {normalised(s) for s in steps} <= built, (steps, built)


def test_systemd_units() -> None:
    units = {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("*.service")}
    assert set(units) == {"prometheus-gateway.service", "prometheus-gateway-ship.service"}
    commands = {}
    for name, text in units.items():
        exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)  # type: ignore[union-attr]
        commands[name] = parses(shlex.split(exec_start)).command
        assert re.search(r"^User=(?!root)\S+", text, re.M)
        env = set(re.findall(r"^Environment=([A-Z_]+)=", text, re.M))
        assert_env_known(env, "")
    assert commands == {
        "prometheus-gateway.service": "serve",
        "prometheus-gateway-ship.service": "ship",
    }
    stop = int(re.search(r"TimeoutStopSec=(\d+)", units["prometheus-gateway.service"]).group(1))  # type: ignore[union-attr]
    assert stop > 30  # the default [server] drain_s


def test_grafana_dashboard_reads_series_the_code_exports() -> None:
    dash = json.loads((DEPLOY / "grafana" / "prometheus-gateway.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"prometheus_gateway_[a-z_]+", e)}
    assert names
    exported = set(re.findall(r'f"\{PREFIX\}_([a-z_]+)"', SOURCE)) | set(
        re.findall(r'"prometheus_gateway_([a-z_]+)"', SOURCE)
    )
    for name in names:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name.removeprefix("prometheus_gateway_"))
        assert base in exported, name
