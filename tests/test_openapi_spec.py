"""The gateway's own API description, `schemas/openapi.yaml`, against the gateway.

- The packaged JSON copy (what `/openapi.json` serves) is the YAML, exactly,
  and the running gateway serves it; every route the app has is described.
- schemathesis generates requests from the spec for every operation and sends
  them to a running gateway (the built-in simulator upstream, made quick): no
  answer is a 5xx, and every answer (status, content type, headers, body) is
  one the spec describes. `/v1/*` is called with a user key, `/admin/*` with
  the admin key. Bounded: a few examples per operation, derandomized.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_process import ADMIN_KEY, GatewayProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC_YAML = ROOT / "schemas" / "openapi.yaml"
SPEC_JSON = ROOT / "proxy" / "api" / "openapi.json"
SPEC = yaml.safe_load(SPEC_YAML.read_text())
EXAMPLES = 25

FAST_SIM = "".join(
    f"""
[[models.{alias}.deployments]]
provider = "sim"
ttft_ms = 0
tokens_per_second = 0
"""
    for alias in (
        "prometheus-spark",
        "prometheus-lite",
        "prometheus-core",
        "prometheus-vision",
        "prometheus-pulse",
        "prometheus-surge",
    )
)


def test_the_packaged_json_is_the_yaml() -> None:
    assert json.loads(SPEC_JSON.read_text()) == SPEC, (
        "proxy/api/openapi.json is out of date: regenerate it from schemas/openapi.yaml"
    )


def test_every_route_of_the_app_is_described() -> None:
    app_py = (ROOT / "proxy" / "server" / "app.py").read_text()
    routes = re.findall(r'add_(get|post|patch|delete)\("([^"]+)"', app_py)
    assert routes
    for method, path in routes:
        assert method in SPEC["paths"].get(path, {}), f"{method.upper()} {path} not in the spec"


@pytest.fixture(scope="module")
def spec_gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("spec"), '[storage]\npath = "gateway.db"\n' + FAST_SIM
    )
    gw.start()
    key = gw.create_key("spec-client")
    yield gw, key["key"]
    gw.stop()


def test_the_gateway_serves_its_spec(spec_gateway: Any) -> None:
    import urllib.request

    gw, _ = spec_gateway
    with urllib.request.urlopen(f"{gw.root_url}/openapi.json", timeout=10) as reply:
        assert reply.status == 200
        assert json.loads(reply.read()) == SPEC


# What "no answer outside the spec" means, check by check. Not run: whether the
# gateway refuses every request the spec's schemas would not generate, or takes
# every one they would (negative_data_rejection, positive_data_acceptance): the
# OpenAI-compatible routes pass fields and values through to the upstream by
# design, and the spec's request schemas describe what a client should send.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.unsupported_method,
]
schema = schemathesis.openapi.from_dict(SPEC)
# multipart audio needs a real audio file; the dashboard signs in with a cookie
# and /metrics, /llms.txt answer plain text: each has its own tests
described = (
    schema.exclude(path="/v1/audio/transcriptions")
    .exclude(tag="dashboard")
    .exclude(tag="operations")
)


@described.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_answers_stay_inside_the_spec(case: Any, spec_gateway: Any) -> None:
    gw, user_key = spec_gateway
    token = ADMIN_KEY if case.path.startswith("/admin") else user_key
    case.call_and_validate(
        base_url=gw.root_url,
        headers={"Authorization": f"Bearer {token}"},
        checks=CHECKS,
        timeout=30,
    )
