"""Every refusal in OpenAI's error shape, with its status and an x-request-id."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from gateway_process import ADMIN_KEY, GatewayProcess
from waiting import DEADLINE_S, wait_for

HELLO = [{"role": "user", "content": "hello"}]


def raw_request(
    gateway: GatewayProcess,
    path: str,
    body: bytes | None = None,
    key: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(gateway.root_url + path, data=body, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def assert_openai_error(
    status: int,
    headers: dict[str, str],
    body: Any,
    want_status: int,
    want_code: str | None,
    want_type: str | None = None,
    want_param: str | None = None,
) -> None:
    assert status == want_status, body
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == want_code
    if want_type is not None:
        assert err["type"] == want_type
    if want_param is not None:
        assert err["param"] == want_param
    assert headers.get("x-request-id", "").startswith("req_")


def chat_body(model: str = "prometheus-lite", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": HELLO, **extra}).encode()


def test_no_key(gateway: GatewayProcess) -> None:
    status, headers, body = raw_request(gateway, "/v1/chat/completions", chat_body())
    assert_openai_error(status, headers, body, 401, "missing_api_key", "invalid_request_error")


def test_bad_key(gateway: GatewayProcess) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body(), key="prom_sk_" + "x" * 40
    )
    assert_openai_error(status, headers, body, 401, "invalid_api_key")
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="prom_sk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_revoked_key(gateway: GatewayProcess) -> None:
    created = gateway.create_key("to-revoke")
    gateway.cli("keys", "revoke", created["id"])

    def refused() -> tuple[int, dict[str, str], Any] | None:
        answer = raw_request(gateway, "/v1/chat/completions", chat_body(), key=created["key"])
        return answer if answer[0] != 200 else None

    # how fast is test_keys_live's business; here, the refusal's shape once it comes
    status, headers, body = wait_for(refused, message="the revoked key to be refused")
    assert_openai_error(status, headers, body, 401, "revoked_api_key")


def test_unknown_model(
    gateway: GatewayProcess, api_key: dict[str, Any], client: openai.OpenAI
) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body("gpt-unknown"), key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 404, "model_not_found", want_param="model")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-unknown", messages=HELLO)  # type: ignore


def test_model_not_allowed_for_key(gateway: GatewayProcess) -> None:
    limited = gateway.create_key("lite-only", models="prometheus-lite")
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body("prometheus-core"), key=limited["key"]
    )
    assert_openai_error(status, headers, body, 403, "model_not_allowed", "permission_error")
    ok, _, reply = raw_request(
        gateway, "/v1/chat/completions", chat_body("prometheus-lite"), key=limited["key"]
    )
    assert ok == 200 and reply["model"] == "prometheus-lite"
    listed = openai.OpenAI(base_url=gateway.base_url, api_key=limited["key"]).models.list()
    assert [m.id for m in listed] == ["prometheus-lite"]


def test_wrong_endpoint_for_alias(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body("prometheus-atlas"), key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 400, "model_not_supported", want_param="model")


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[1, 2]", b'{"model": "prometheus-lite",'])
def test_malformed_json(gateway: GatewayProcess, api_key: dict[str, Any], payload: bytes) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", payload, key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 400, "invalid_json", "invalid_request_error")


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/chat/completions", {"messages": HELLO}, "model"),
        ("/v1/chat/completions", {"model": "prometheus-lite"}, "messages"),
        ("/v1/embeddings", {"model": "prometheus-atlas"}, "input"),
        ("/v1/embeddings", {"input": "hi"}, "model"),
    ],
)
def test_missing_required_fields(
    gateway: GatewayProcess, api_key: dict[str, Any], path: str, payload: dict[str, Any], param: str
) -> None:
    status, headers, body = raw_request(
        gateway, path, json.dumps(payload).encode(), key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 400, "missing_required_parameter", want_param=param)


def test_invalid_values(
    gateway: GatewayProcess, api_key: dict[str, Any], client: openai.OpenAI
) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body(messages=[]), key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 400, "invalid_value", want_param="messages")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="prometheus-atlas", input="x", encoding_format="hex")  # type: ignore[arg-type]
    assert info.value.code == "invalid_value"


def test_body_over_the_limit(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    big = chat_body(padding="x" * (1024 * 1024 + 10))  # the session gateway allows 1 MB
    status, headers, body = raw_request(gateway, "/v1/chat/completions", big, key=api_key["key"])
    assert_openai_error(status, headers, body, 413, "request_too_large")


def test_413_is_answered_before_the_body_is_read(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key['key']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE_S) as sock:
        sock.sendall(head + b'{"model": "prometheus-lite", "messages": [')
        # nothing more is sent: the answer must come anyway
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"request_too_large" in reply
    assert b"x-request-id: req_" in reply.lower()


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body), however it is segmented."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _response_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break  # the gateway closed the connection: that is all there is
        data += chunk
    return data


def _response_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


def test_upstream_down(
    gateway: GatewayProcess, api_key: dict[str, Any], client: openai.OpenAI
) -> None:
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", chat_body("prometheus-surge"), key=api_key["key"]
    )
    assert_openai_error(status, headers, body, 502, "upstream_unavailable", "api_error")
    assert "sk-upstream" not in json.dumps(body)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="prometheus-surge", messages=HELLO, stream=True)
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    ("magic", "status", "code"),
    [
        ("__status_500__", 502, "upstream_error"),
        ("__status_401__", 502, "upstream_auth_failed"),
        ("__status_429__", 429, "rate_limit_exceeded"),
        ("__status_400__", 400, "context_length_exceeded"),
    ],
)
def test_upstream_refuses(
    gateway: GatewayProcess, api_key: dict[str, Any], magic: str, status: int, code: str
) -> None:
    payload = json.dumps(
        {"model": "prometheus-lite", "messages": [{"role": "user", "content": magic}]}
    ).encode()
    got, headers, body = raw_request(gateway, "/v1/chat/completions", payload, key=api_key["key"])
    assert_openai_error(got, headers, body, status, code)
    if status == 429:
        assert headers.get("Retry-After") == "7"
    assert "sk-upstream-secret" not in json.dumps(body)


def test_unknown_path_and_method(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    status, headers, body = raw_request(gateway, "/v1/nothing-here", b"{}", key=api_key["key"])
    assert_openai_error(status, headers, body, 404, "not_found")
    status, headers, body = raw_request(
        gateway, "/v1/chat/completions", key=api_key["key"], method="GET"
    )
    assert_openai_error(status, headers, body, 405, "method_not_allowed")


def test_healthz_needs_no_key(gateway: GatewayProcess) -> None:
    with urllib.request.urlopen(f"{gateway.root_url}/healthz", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["x-request-id"].startswith("req_")


def test_admin_api(gateway: GatewayProcess) -> None:
    status, headers, body = raw_request(
        gateway, "/admin/keys", json.dumps({"name": "x"}).encode(), key="wrong-admin-key"
    )
    # a wrong admin bearer: 401 (CONTRACT.md), with the admin API's own code
    assert_openai_error(status, headers, body, 401, "invalid_admin_key", "invalid_request_error")
    status, headers, body = raw_request(gateway, "/admin/keys", json.dumps({"name": "x"}).encode())
    assert_openai_error(status, headers, body, 401, "missing_api_key", "invalid_request_error")
    status, _, created = raw_request(
        gateway, "/admin/keys", json.dumps({"name": "from-admin"}).encode(), key=ADMIN_KEY
    )
    assert status == 200
    assert set(created) >= {"id", "key", "name"} and created["key"].startswith("prom_sk_")
    reply = openai.OpenAI(
        base_url=gateway.base_url, api_key=created["key"], max_retries=0
    ).models.list()
    assert reply.data
    status, _, rows = raw_request(gateway, "/admin/usage?by=week", key=ADMIN_KEY, method="GET")
    assert status == 200 and isinstance(rows, list)


def test_request_id_is_in_the_log_line(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    _, headers, _ = raw_request(
        gateway, "/v1/chat/completions", chat_body("gpt-unknown"), key=api_key["key"]
    )
    rid = headers["x-request-id"]
    lines = wait_for(lambda: gateway.log_lines_for(rid), message=f"the log line of {rid}")
    assert len(lines) == 1
    assert lines[0]["status"] == 404 and lines[0]["key_id"] == api_key["id"]
