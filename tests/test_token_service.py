"""One tokenizer per machine: the gateway's counting process does the local counts.

A worker that builds a tiktoken encoding itself stalls its event loop for
100-230 ms (the GIL is held throughout) and grows by ~30-56 MiB; so the
gateway starts one counting process (`proxy.metering.token_server`) and its
workers ask it. These tests run the real gateway (`--workers 1` and `2`) in
front of the fake upstream and check what a user and an operator would see:
cut streams billed to the exact tiktoken count, the encoding loaded in the
counting process and not in a worker (its log line, the workers' memory), the
fallback to in-process counting when that process is killed or hangs (still
exact, and logged), and no counting process left behind after the gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_process import GatewayProcess, gateway_config
from test_tokens_offline import _offline_env
from upstream_app import Upstream, reply_words
from waiting import wait_for

from proxy.metering.tokens import count_chat_input, get_encoding

SERVER_MODULE = "proxy.metering.token_server"
STORY = [{"role": "user", "content": "__hold_after_3__ tell me a long story"}]
NO_USAGE = [{"role": "user", "content": "__no_usage__ hi"}]
LOADED_ENCODING_MIB = 25  # o200k_base adds ~56 MiB to the process that builds it


# ---------------------------------------------------------------- /proc


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), or None when there is no process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _service_pid(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    found = [p for p in _children(gw.proc.pid) if SERVER_MODULE in _cmdline(p) and not _gone(p)]
    assert len(found) == 1, f"counting processes of the gateway: {found}"
    return found[0]


def _worker_pids(gw: GatewayProcess) -> list[int]:
    """The processes that serve requests: the gateway itself with one worker, else
    its forked workers."""
    assert gw.proc is not None
    if gw.workers <= 1:
        return [gw.proc.pid]
    pids = [p for p in _children(gw.proc.pid) if SERVER_MODULE not in _cmdline(p) and not _gone(p)]
    assert len(pids) == gw.workers, pids
    return pids


# ---------------------------------------------------------------- requests


def _start(tmp_path: Path, upstream: Upstream, workers: int, **kw: Any) -> GatewayProcess:
    gw = GatewayProcess(tmp_path / "gw", gateway_config(upstream.base_url), workers=workers, **kw)
    gw.start()
    # the counting process says it is up once it has imported what it needs
    wait_for(lambda: _events(gw, "token_service_ready"), message="the counting process")
    return gw


def _events(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in gw.log_lines() if line.get("event") == event]


def _cut_stream(gw: GatewayProcess, key: dict[str, Any]) -> str:
    """A stream the client leaves after three content chunks; what it received."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0, timeout=30)
    received, chunks = "", 0
    with client.chat.completions.create(
        model="prometheus-lite", stream=True, messages=STORY
    ) as stream:
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                received += delta
                chunks += 1
                if chunks == 3:
                    break
    assert received == "".join(reply_words(3))
    return received


def _record(gw: GatewayProcess, key_id: str) -> tuple[Any, ...]:
    rows = wait_for(
        lambda: gw.db_rows(
            "SELECT status, input_tokens, output_tokens, usage_source, error "
            "FROM requests WHERE key_id = ?",
            key_id,
        ),
        message=f"the usage record of {key_id}",
    )
    assert len(rows) == 1, rows
    return tuple(rows[0])


def _assert_billed_exactly(gw: GatewayProcess, key_id: str, received: str) -> None:
    """The cut stream's record: 499, counted locally, to the exact tiktoken count."""
    status, tin, tout, source, error = _record(gw, key_id)
    assert (status, source, error) == (499, "local", "client_disconnected")
    assert tout == len(get_encoding("o200k_base").encode(received))
    assert tin == count_chat_input({"messages": STORY})


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("workers", [1, 2])
def test_a_cut_stream_is_counted_by_the_counting_process(
    tmp_path: Path, upstream: Upstream, workers: int
) -> None:
    gw = _start(tmp_path, upstream, workers)
    try:
        service = _service_pid(gw)
        key = gw.create_key("cut")
        rss_before = {pid: _rss_mib(pid) for pid in _worker_pids(gw)}
        received = _cut_stream(gw, key)
        _assert_billed_exactly(gw, key["id"], received)
        # no worker grew by an encoding's size, or counted in-process ...
        grown = {pid: round(_rss_mib(pid) - mib, 1) for pid, mib in rss_before.items()}
        assert all(mib < LOADED_ENCODING_MIB for mib in grown.values()), grown
        assert not _events(gw, "token_service_unavailable")
        assert not _events(gw, "token_count_fallback")
        # ... the encoding was built in the counting process, which says so
        loaded = _events(gw, "tokenizer_loaded")
        assert [(e["pid"], e["encoding"]) for e in loaded] == [(service, "o200k_base")]
        ready = _events(gw, "token_service_ready")[0]
        assert loaded[0]["rss_mib"] - ready["rss_mib"] > LOADED_ENCODING_MIB
    finally:
        gw.stop()


def test_a_killed_counting_process_leaves_counting_to_the_workers(
    tmp_path: Path, upstream: Upstream
) -> None:
    gw = _start(tmp_path, upstream, workers=2)
    try:
        key = gw.create_key("before-kill")
        _assert_billed_exactly(gw, key["id"], _cut_stream(gw, key))
        service = _service_pid(gw)
        os.kill(service, signal.SIGKILL)
        wait_for(lambda: _gone(service), message="the counting process to die")

        key = gw.create_key("after-kill")
        _assert_billed_exactly(gw, key["id"], _cut_stream(gw, key))
        fallbacks = _events(gw, "token_service_unavailable")
        assert fallbacks, "the worker did not log that it counted in-process"
        assert {f["worker_pid"] for f in fallbacks} <= set(_worker_pids(gw))
        assert all(f["counting"] == "in-process" for f in fallbacks)
        assert "Connection" in fallbacks[0]["reason"]  # refused: nobody listens any more
    finally:
        gw.stop()


def test_a_hung_counting_process_times_out_to_in_process_counting(
    tmp_path: Path, upstream: Upstream
) -> None:
    gw = _start(tmp_path, upstream, workers=1)
    service = _service_pid(gw)
    try:
        key = gw.create_key("hung")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0, timeout=60)
        os.kill(service, signal.SIGSTOP)  # alive, accepting into its backlog, never answering
        reply = client.chat.completions.create(model="prometheus-lite", messages=NO_USAGE)
        assert reply.usage is None
        status, tin, tout, source, _error = _record(gw, key["id"])
        enc = get_encoding("o200k_base")
        assert (status, source) == (200, "local")
        assert tout == len(enc.encode(reply.choices[0].message.content or ""))
        assert tin == count_chat_input({"messages": NO_USAGE})
        fallbacks = _events(gw, "token_service_unavailable")
        assert fallbacks and fallbacks[0]["reason"].startswith("TimeoutError")
    finally:
        os.kill(service, signal.SIGCONT)
        gw.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_counting_process_stops_after_the_gateway(
    tmp_path: Path, upstream: Upstream, workers: int
) -> None:
    gw = _start(tmp_path, upstream, workers=workers)
    service = _service_pid(gw)
    socket_path = Path(_events(gw, "token_service_started")[0]["socket"])
    assert socket_path.exists()
    gw.stop()  # SIGTERM: the workers drain, then the gateway stops the counting process
    assert gw.proc is not None and gw.proc.returncode == 0
    assert _gone(service)
    assert not socket_path.parent.exists()
    stopped = _events(gw, "token_service_stopped")
    assert [e["pid"] for e in stopped] == [service]


def test_no_counting_process_outlives_a_killed_gateway(tmp_path: Path, upstream: Upstream) -> None:
    gw = _start(tmp_path, upstream, workers=1)
    service = _service_pid(gw)
    socket_path = Path(_events(gw, "token_service_started")[0]["socket"])
    assert gw.proc is not None
    gw.proc.kill()  # SIGKILL to the gateway alone: nobody stops the counting process
    gw.proc.wait(10)
    wait_for(lambda: _gone(service), message="the orphaned counting process to exit")
    wait_for(lambda: not socket_path.parent.exists(), message="its socket dir to be removed")


def test_offline_counts_go_through_the_counting_process(tmp_path: Path, upstream: Upstream) -> None:
    """Cut off from the internet, with an empty tiktoken cache, two workers still
    bill a reply without usage, counted by the counting process."""
    gw = _start(tmp_path, upstream, workers=2, env=_offline_env(tmp_path))
    try:
        service = _service_pid(gw)
        key = gw.create_key("offline")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
        reply = client.chat.completions.create(model="prometheus-lite", messages=NO_USAGE)
        status, _tin, tout, source, _error = _record(gw, key["id"])
        assert (status, source) == (200, "local")
        assert tout == len(
            get_encoding("o200k_base").encode(reply.choices[0].message.content or "")
        )
        assert [e["pid"] for e in _events(gw, "tokenizer_loaded")] == [service]
        assert not _events(gw, "token_service_unavailable")
    finally:
        gw.stop()


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_the_counting_process_outlives_the_draining_workers(
    tmp_path: Path, upstream: Upstream
) -> None:
    """SIGTERM with a stream in flight: the workers stop listening and drain, and
    the counting process stays up as long as any of them runs (they may still need
    a count), then stops."""
    gw = _start(tmp_path, upstream, workers=2)
    assert gw.proc is not None
    service = _service_pid(gw)
    workers = _worker_pids(gw)
    key = gw.create_key("drain")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0, timeout=30)
    with client.chat.completions.create(
        model="prometheus-lite", stream=True, messages=STORY
    ) as stream:
        next(iter(stream))  # the stream is open, and held by the upstream
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _refuses(gw.port), message="the workers to stop listening")
        # the held stream keeps a worker draining: the counting process must stay
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if any(not _gone(w) for w in workers):
                assert not _gone(service), "the counting process stopped before the workers"
            time.sleep(0.02)
        assert any(not _gone(w) for w in workers), "no worker was draining"
    # the client left: the last worker finishes, then the gateway stops the process
    gw.proc.wait(30)
    assert all(_gone(w) for w in workers) and _gone(service)
    assert [e["pid"] for e in _events(gw, "token_service_stopped")] == [service]
    assert not _events(gw, "token_service_unavailable")


def test_the_loop_lag_probe_is_opt_in(
    tmp_path: Path, upstream: Upstream, gateway: GatewayProcess
) -> None:
    """Off by default (no route); with PROMETHEUS_LOOP_LAG_PROBE=1 a worker answers its
    loop lag (what bench/compare.py reads)."""
    with pytest.raises(urllib.error.HTTPError) as off:
        urllib.request.urlopen(f"{gateway.root_url}/debug/loop-lag", timeout=10)
    assert off.value.code == 404
    gw = _start(tmp_path, upstream, workers=1, env={"PROMETHEUS_LOOP_LAG_PROBE": "1"})
    try:

        def lag() -> dict[str, Any]:
            url = f"{gw.root_url}/debug/loop-lag"
            with urllib.request.urlopen(url, timeout=10) as r:
                return dict(json.loads(r.read()))

        first = wait_for(lambda: (got := lag())["samples"] > 10 and got, message="samples")
        assert first["pid"] == _worker_pids(gw)[0]
        assert 0 <= first["p50_ms"] <= first["p99_ms"] <= first["max_ms"]
    finally:
        gw.stop()


def test_socket_dirs_left_by_killed_gateways_are_swept_at_start(
    tmp_path: Path, upstream: Upstream
) -> None:
    """SIGKILL to a gateway and its counting process leaves their socket dir behind;
    the next gateway to start removes such dirs, and leaves a live one alone."""
    tmpdir = Path(tempfile.mkdtemp(prefix="tk"))  # short: a unix socket path has a limit
    try:
        old = time.time() - 3600
        dead = tmpdir / "prometheus-tokens-dead0000"
        dead.mkdir()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(dead / "count.sock"))  # bound, then closed: nobody listens
        live = tmpdir / "prometheus-tokens-live0000"
        live.mkdir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(live / "count.sock"))
        listener.listen()
        for d in (dead, live):
            os.utime(d, (old, old))
        gw = _start(tmp_path, upstream, workers=1, env={"TMPDIR": str(tmpdir)})
        try:
            assert not dead.exists()
            assert live.exists()
            mine = Path(_events(gw, "token_service_started")[0]["socket"])
            assert mine.parent.parent == tmpdir and mine.exists()
        finally:
            gw.stop()
            listener.close()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
