"""Token counting needs no network: the encodings ship in the package, checked by sha256.

Each check runs in a fresh interpreter whose sockets refuse every address but
loopback, with an empty tiktoken cache: a download attempt would fail loudly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import openai
from gateway_process import GatewayProcess, gateway_config, gateway_env
from upstream_app import Upstream
from waiting import wait_for

NO_NETWORK = """
import socket
_real_connect = socket.socket.connect
def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and "/" not in host:
        raise OSError(101, "network unreachable (test)")
    return _real_connect(self, address)
socket.socket.connect = _loopback_only
_real_getaddrinfo = socket.getaddrinfo
def _no_dns(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        raise socket.gaierror(-2, "name resolution disabled (test)")
    return _real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _no_dns
"""


def _offline_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "offline-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir(exist_ok=True)
    return gateway_env(
        {
            "PYTHONPATH": str(site),
            "TIKTOKEN_CACHE_DIR": str(cache),
            "DATA_GYM_CACHE_DIR": str(cache),
        }
    )


def test_counting_works_with_the_network_unreachable(tmp_path: Path) -> None:
    script = """
import json, socket
from proxy.metering import tokens
try:
    socket.create_connection(("93.184.216.34", 443), timeout=2)
    blocked = False
except OSError:
    blocked = True
print(json.dumps({
    "blocked": blocked,
    "o200k": tokens.count_text("hello world, how are you?", "o200k_base"),
    "cl100k": tokens.count_text("hello world, how are you?", "cl100k_base"),
    "chat": tokens.count_chat_input({"messages": [{"role": "user", "content": "hi"}]}),
}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["blocked"] is True
    assert got["o200k"] == 7 and got["cl100k"] == 7
    assert got["chat"] > 1


def test_bundled_files_match_the_published_sha256() -> None:
    from proxy.metering import tokens

    published = {
        "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    }
    for name, sha in published.items():
        data = (tokens.DATA_DIR / f"{name}.tiktoken").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert tokens.ENCODINGS[name][0] == sha


def test_gateway_counts_locally_offline(upstream: Upstream, tmp_path: Path) -> None:
    """The running gateway, cut off from the internet, still bills a reply without usage."""
    gw = GatewayProcess(
        tmp_path / "gw", gateway_config(upstream.base_url), env=_offline_env(tmp_path)
    )
    gw.start()
    try:
        created = gw.create_key("offline")
        client = openai.OpenAI(base_url=gw.base_url, api_key=created["key"], max_retries=0)
        reply = client.chat.completions.create(
            model="prometheus-lite", messages=[{"role": "user", "content": "__no_usage__ hi"}]
        )
        assert reply.usage is None
        rows = wait_for(
            lambda: gw.db_rows("SELECT status, output_tokens, usage_source FROM requests"),
            message="the reply's usage record",
        )
        from proxy.metering.tokens import count_text

        assert rows == [(200, count_text(reply.choices[0].message.content or ""), "local")]
    finally:
        gw.stop()
