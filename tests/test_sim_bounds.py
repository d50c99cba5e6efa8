"""The simulator served standalone (`prometheus-gateway sim`) never answers 5xx to
odd input, and bounds its work as OpenAI bounds a model's.

It has no gateway in front of it, so it must refuse on its own what the
gateway refuses: the same bad bodies (`bad_bodies.py`) get the same 400,
`param` and `code`, and so do a body that is not its Content-Encoding and one
nested too deep. Its limits: 16,384 completion tokens, a 128,000-token
context, embeddings of at most 2,048 inputs, 3,072 dimensions, 8,192 tokens
per input and 300,000 per request. Tool schemas of any shape still get an
answer. Through the gateway, the in-process simulator (prometheus-pulse)
refuses `max_tokens` past its cap the same way.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_bodies import CHAT_CASES, EMBEDDING_CASES, USER, ids
from gateway_process import GatewayProcess, free_port, gateway_env
from waiting import wait_for

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


class Sim:
    def __init__(self, port: int) -> None:
        self.port = port

    def send(
        self, path: str, body: Any = None, raw: bytes | None = None, headers: Any = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else json.dumps(body).encode()
            head = {"Content-Type": "application/json", **(headers or {})}
            conn.request("POST", path, body=data, headers=head)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/v1/models")
            return conn.getresponse().status == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    port = free_port()
    workdir = Path(tmp_path_factory.mktemp("sim"))  # not the source tree: the installed package
    log = workdir / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "sim", "--port", str(port)],
            cwd=workdir,
            env=gateway_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Sim(port)
    try:
        wait_for(server.answers, timeout=30, message="the standalone simulator")
        yield server
    finally:
        proc.terminate()
        proc.wait(15)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()


def assert_refused(answer: tuple[int, Any], param: str | None, code: str | None) -> str:
    status, body = answer
    assert status == 400, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert isinstance(err["message"], str) and err["message"]
    return str(err["message"])


@pytest.mark.parametrize(
    ("fields", "param", "code"), [c[1:] for c in CHAT_CASES], ids=ids(CHAT_CASES)
)
def test_odd_chat_bodies_get_the_gateways_400(
    sim: Sim, fields: dict[str, Any], param: str, code: str
) -> None:
    assert_refused(sim.send(CHAT, {"model": "m", "messages": [USER], **fields}), param, code)


@pytest.mark.parametrize(
    ("fields", "param", "code"), [c[1:] for c in EMBEDDING_CASES], ids=ids(EMBEDDING_CASES)
)
def test_odd_embeddings_bodies_get_the_gateways_400(
    sim: Sim, fields: dict[str, Any], param: str, code: str
) -> None:
    assert_refused(sim.send(EMBEDDINGS, {"model": "m", "input": "x", **fields}), param, code)


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
def test_bodies_it_cannot_read_are_a_400(sim: Sim, path: str) -> None:
    valid = {"model": "m", "messages": [USER], "input": "x"}
    plain = json.dumps(valid).encode()
    assert sim.send(path, raw=plain, headers={"Content-Encoding": "gzip"})[0] == 400
    deep = json.dumps(valid)[:-1] + ', "x": ' + "[" * 300 + "]" * 300 + "}"
    assert_refused(sim.send(path, raw=deep.encode()), None, "invalid_json")
    assert sim.send(path, {**valid, "model": {"name": "m"}})[0] == 400


def test_max_tokens_is_capped_at_16384(sim: Sim) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        for wanted in (16_385, 10_000_000):
            message = assert_refused(
                sim.send(CHAT, {"model": "m", "messages": [USER], key: wanted}),
                key,
                "invalid_value",
            )
            assert f"{key} is too large: {wanted}" in message and "16384" in message
    status, reply = sim.send(CHAT, {"model": "m", "messages": [USER], "max_tokens": 16_384})
    assert status == 200
    assert reply["usage"]["completion_tokens"] == 16_384
    assert reply["choices"][0]["finish_reason"] == "length"


def test_the_context_is_bounded(sim: Sim) -> None:
    long = {"role": "user", "content": "word " * 130_000}
    assert_refused(
        sim.send(CHAT, {"model": "m", "messages": [long]}), "messages", "context_length_exceeded"
    )
    fits = {"role": "user", "content": "word " * 1_000}
    status, reply = sim.send(CHAT, {"model": "m", "messages": [fits]})
    assert status == 200 and reply["usage"]["prompt_tokens"] == 1_000 + 3 + 3


def test_embedding_dimensions_are_capped_at_3072(sim: Sim) -> None:
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 3073}),
        "dimensions",
        "invalid_value",
    )
    status, reply = sim.send(
        EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 3072, "encoding_format": "float"}
    )
    assert status == 200 and len(reply["data"][0]["embedding"]) == 3072


def test_embedding_inputs_are_capped_at_2048(sim: Sim) -> None:
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": ["a"] * 2049}),
        "input",
        "array_above_max_length",
    )
    # what a 5 KB request used to turn into a 176 MB reply: 1,000 inputs of 8,192 dimensions
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": ["a"] * 1000, "dimensions": 8192}),
        "dimensions",
        "invalid_value",
    )
    body = {"model": "m", "input": [f"a{i}" for i in range(2048)], "dimensions": 2}
    status, reply = sim.send(EMBEDDINGS, body)
    assert status == 200 and [d["index"] for d in reply["data"]] == list(range(2048))


def test_embedding_tokens_are_capped_per_input_and_per_request(sim: Sim) -> None:
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": "a " * 8193}),
        "input",
        "context_length_exceeded",
    )
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": [list(range(8193))]}),
        "input",
        "context_length_exceeded",
    )
    too_many = ["a " * 8192] * 37  # 303,104 tokens
    assert_refused(
        sim.send(EMBEDDINGS, {"model": "m", "input": too_many, "dimensions": 1}),
        "input",
        "max_tokens_per_request",
    )
    status, reply = sim.send(EMBEDDINGS, {"model": "m", "input": too_many[:36], "dimensions": 1})
    assert status == 200 and reply["usage"]["prompt_tokens"] == 36 * 8192


@pytest.mark.parametrize(
    "parameters",
    [
        {"enum": "abc"},
        {"anyOf": {"type": "string"}},
        {"oneOf": []},
        {"type": "object", "properties": [1, 2]},
        {"type": ["null"]},
        {"type": [{"odd": 1}, "integer"]},
        {"type": "array", "items": 5},
        {"properties": {"a": {"properties": {"b": {"const": [[[[1]]]]}}}}},
    ],
)
def test_tool_schemas_of_any_shape_get_an_answer(sim: Sim, parameters: dict[str, Any]) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    for stream in (False, True):
        body = {"model": "m", "messages": [USER], "tools": [tool], "stream": stream}
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=60)
        try:
            conn.request("POST", CHAT, body=json.dumps(body), headers={"Content-Type": "a/json"})
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        assert resp.status == 200, text
        assert '"tool_calls"' in text and ("data: [DONE]" in text) == stream


def test_the_in_process_simulator_caps_max_tokens_through_the_gateway(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    body = {"model": "prometheus-pulse", "messages": [USER], "max_tokens": 20_000}
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    try:
        conn.request(
            "POST",
            CHAT,
            body=json.dumps(body),
            headers={
                "Authorization": f"Bearer {api_key['key']}",
                "Content-Type": "application/json",
            },
        )
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        assert resp.getheader("x-request-id", "").startswith("req_")
    finally:
        conn.close()
    assert resp.status == 400, reply
    assert (reply["error"]["param"], reply["error"]["code"]) == ("max_tokens", "invalid_value")
