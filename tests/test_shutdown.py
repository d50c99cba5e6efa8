"""Stopping the gateway: SIGTERM drains, a busy port fails fast, no worker is orphaned.

- SIGTERM gives requests in flight `[server] drain_s` to finish. Streams still
  running then get an OpenAI-shaped error event (not a cut connection), and a
  request still waiting for its upstream a 503 in OpenAI's shape; every one
  of them has exactly one usage row in SQLite once the process has exited,
  streams billed for what was streamed. The gateways here start fresh, so no
  tokenizer is loaded when those streams are billed: the records wait for it.
- Streams that finish within the grace complete normally. During the drain,
  idle keep-alive connections are closed at once, and a request whose body
  was still arriving at the signal is read to its end and answered.
- `--workers N` on a port in use exits non-zero at once, naming the port.
- A SIGTERM that reaches the supervisor while it replaces a killed worker
  leaves no worker process alive.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from gateway_process import GatewayProcess, gateway_config, gateway_env
from upstream_app import Upstream
from waiting import wait_for

STREAMS = 10
EXIT_S = 60.0  # generous bound for a drained gateway to exit


def _config(upstream: Upstream, drain_s: float | None) -> str:
    text = gateway_config(upstream.base_url)
    if drain_s is not None:
        text = text.replace("[server]\n", f"[server]\ndrain_s = {drain_s}\n", 1)
    return text


@dataclass
class StreamClient:
    """One streaming chat request read event by event in its own thread."""

    port: int
    key: str
    magic: str
    events: list[Any] = field(default_factory=list)
    contents: int = 0
    request_id: str | None = None
    failure: BaseException | None = None
    ended_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> StreamClient:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = {
            "model": "prometheus-lite",
            "stream": True,
            "messages": [{"role": "user", "content": f"stream please {self.magic}"}],
        }
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(body),
                {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            self.request_id = resp.headers["x-request-id"]
            assert resp.status == 200, resp.read()
            while line := resp.readline():  # raises IncompleteRead if the stream is cut
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                event = "[DONE]" if data == b"[DONE]" else json.loads(data)
                self.events.append(event)
                if isinstance(event, dict) and any(
                    (c.get("delta") or {}).get("content") for c in event.get("choices") or ()
                ):
                    self.contents += 1
            self.ended_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            conn.close()
            self.done.set()


def _start_streams(gw: GatewayProcess, key: str, magic: str, n: int) -> list[StreamClient]:
    streams = [StreamClient(gw.port, key, magic).start() for _ in range(n)]
    wait_for(
        lambda: all(s.contents >= 3 for s in streams),
        message=lambda: f"3 content chunks on each stream ({[s.contents for s in streams]})",
    )
    return streams


@dataclass
class PlainClient:
    """One non-stream chat request in its own thread."""

    port: int
    key: str
    magic: str
    status: int | None = None
    body: Any = None
    request_id: str | None = None
    failure: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> PlainClient:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = {"model": "prometheus-lite", "messages": [{"role": "user", "content": self.magic}]}
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(body),
                {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            self.status, self.request_id = resp.status, resp.headers["x-request-id"]
            self.body = json.loads(resp.read())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            conn.close()
            self.done.set()


def _shutdown_logged(gw: GatewayProcess) -> list[dict[str, Any]]:
    return wait_for(
        lambda: [ln for ln in gw.log_lines() if ln.get("event") == "shutdown"],
        message="the gateway's shutdown log line",
    )


def _sigterm_and_wait(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    return gw.proc.wait(EXIT_S)


def _rows(gw: GatewayProcess, request_ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = {rid: [] for rid in request_ids}
    for row in gw.db_rows(
        "SELECT request_id, status, output_tokens, usage_source, error FROM requests"
    ):
        if row[0] in rows:
            rows[row[0]].append(row)
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_streams_past_the_grace_with_an_error_event_and_bills_them(
    upstream: Upstream, tmp_path: Path, workers: int
) -> None:
    drain_s = 1.0
    gw = GatewayProcess(tmp_path, _config(upstream, drain_s), workers=workers).start()
    try:
        key = gw.create_key("drained")["key"]
        # the upstream answers these only once released (never, here)
        waiting_for = f"__hold_until_released__ {tmp_path.name}"
        plain = [PlainClient(gw.port, key, waiting_for).start() for _ in range(2)]
        wait_for(
            lambda: len([r for r in upstream.received() if _asked(r, waiting_for)]) == 2,
            message="both non-stream requests at the upstream",
        )
        # the upstream sends three words, then nothing until the gateway hangs up
        streams = _start_streams(gw, key, "__hold_after_3__", STREAMS)
        signalled = time.monotonic()
        assert _sigterm_and_wait(gw) == 0, gw.log_text()[-3000:]
    finally:
        gw.stop()
    for s in streams:
        assert s.done.wait(10), "a stream was still open after the gateway exited"
        assert s.failure is None, f"{s.request_id}: {s.failure!r}"  # not a cut connection
        last = s.events[-1]
        assert isinstance(last, dict) and set(last) == {"error"}, s.events[-2:]
        assert last["error"]["code"] == "server_shutting_down"
        assert set(last["error"]) == {"message", "type", "param", "code"}
        assert s.contents == 3
        assert s.ended_at is not None and s.ended_at - signalled >= drain_s  # the grace held
    for p in plain:
        assert p.done.wait(10) and p.failure is None, repr(p.failure)
        assert p.status == 503, p.body
        assert set(p.body["error"]) == {"message", "type", "param", "code"}
        assert p.body["error"]["code"] == "server_shutting_down"
    rows = _rows(gw, [str(c.request_id) for c in [*streams, *plain]])
    for request_id, found in rows.items():
        assert len(found) == 1, (request_id, found)
        _, status, _, _, error = found[0]
        assert (status, error) == (503, "server_shutting_down")
    for s in streams:
        _, _, output_tokens, source, _ = rows[str(s.request_id)][0]
        assert output_tokens > 0 and source == "local"  # what was streamed, counted here


def _asked(received: dict[str, Any], text: str) -> bool:
    return any(m.get("content") == text for m in received["body"].get("messages") or ())


def test_sigterm_lets_streams_that_finish_within_the_grace_complete(
    upstream: Upstream, tmp_path: Path
) -> None:
    gw = GatewayProcess(tmp_path, _config(upstream, 30)).start()
    try:
        key = gw.create_key("graceful")["key"]
        waiting_for = f"__hold_until_released__ {tmp_path.name}"
        plain = PlainClient(gw.port, key, waiting_for).start()
        wait_for(
            lambda: any(_asked(r, waiting_for) for r in upstream.received()),
            message="the non-stream request at the upstream",
        )
        streams = _start_streams(gw, key, "__hold_until_released__", 5)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        assert _shutdown_logged(gw)[0]["in_flight"] == 6  # all were mid-way at the signal
        upstream.release_held()
        assert gw.proc.wait(EXIT_S) == 0
    finally:
        gw.stop()
    for s in streams:
        assert s.done.wait(10)
        assert s.failure is None, repr(s.failure)
        assert s.events[-1] == "[DONE]"
        assert not any(isinstance(e, dict) and "error" in e for e in s.events)
    assert plain.done.wait(10) and plain.failure is None, repr(plain.failure)
    assert plain.status == 200 and plain.body["choices"][0]["message"]["content"], plain.body
    rows = _rows(gw, [str(c.request_id) for c in [*streams, plain]])
    for request_id, found in rows.items():
        assert len(found) == 1, (request_id, found)
        assert found[0][1] == 200 and found[0][4] is None


def test_drain_closes_idle_connections_and_reads_bodies_still_arriving(
    upstream: Upstream, tmp_path: Path
) -> None:
    gw = GatewayProcess(tmp_path, _config(upstream, 30)).start()
    try:
        key = gw.create_key("draining")["key"]
        held = _start_streams(gw, key, "__hold_until_released__", 1)  # keeps the drain going
        idle = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # now idle, kept alive
        body = json.dumps(
            {"model": "prometheus-pulse", "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        upload = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        upload.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        _shutdown_logged(gw)
        assert idle.recv(65536) == b"", "an idle connection stayed open during the drain"
        upload.sendall(body[10:])
        answer = b""
        while chunk := upload.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"choices"' in answer
        upstream.release_held()
        assert gw.proc.wait(EXIT_S) == 0
        assert held[0].done.wait(10) and held[0].events[-1] == "[DONE]"
    finally:
        gw.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_exits_at_once_naming_the_port(tmp_path: Path, workers: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
            + ["--workers", str(workers)],
            cwd=tmp_path,
            env=gateway_env(),
            capture_output=True,
            text=True,
            timeout=60,  # a gateway that restarts its workers forever fails here
        )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert str(port) in output and "in use" in output, output
    assert "Traceback" not in output, output


class WorkerWatch:
    """Every process the supervisor forks, seen by polling its children until it exits
    (a worker it leaves behind is reparented, so it must be seen before)."""

    def __init__(self, supervisor: int) -> None:
        self._supervisor = psutil.Process(supervisor)
        self.seen: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                children = self._supervisor.children()
            except psutil.NoSuchProcess:
                return
            self.seen += [c.pid for c in children if c.pid not in self.seen and _is_worker(c)]
            time.sleep(0.005)

    def stop(self) -> None:
        self._thread.join(EXIT_S)


def _is_worker(proc: psutil.Process) -> bool:
    """Not the gateway's counting process (proxy.metering.token_server), also its child."""
    try:
        return "proxy.metering.token_server" not in " ".join(proc.cmdline())
    except psutil.Error:
        return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_and_terminate(gw: GatewayProcess, watch: WorkerWatch, in_pause: bool) -> None:
    """SIGKILL a worker, then SIGTERM the supervisor while it replaces it."""
    assert gw.proc is not None
    first = wait_for(
        lambda: len(watch.seen) >= 2 and list(watch.seen), message="the first two workers"
    )
    os.kill(first[0], signal.SIGKILL)
    if in_pause:  # kill its replacement as soon as it starts: it dies young, and the
        # supervisor pauses before the next start; the SIGTERM lands in that pause
        replacement = wait_for(
            lambda: [p for p in watch.seen if p not in first],
            message=lambda: f"the replacement of worker {first[0]}:\n{gw.log_text()[-2000:]}",
        )[0]
        os.kill(replacement, signal.SIGKILL)
        wait_for(
            lambda: any(
                ln.get("event") == "worker_died" and ln.get("pid") == replacement
                for ln in gw.log_lines()
            ),
            message=lambda: f"the supervisor noticing {replacement}'s death:\n{gw.log_text()}",
        )
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(EXIT_S) == 0, gw.log_text()[-3000:]


@pytest.mark.parametrize("in_pause", [False, True], ids=["at_once", "in_restart_pause"])
def test_sigterm_during_a_worker_restart_leaves_no_worker(
    upstream: Upstream, tmp_path: Path, in_pause: bool
) -> None:
    gw = GatewayProcess(tmp_path, _config(upstream, 1), workers=2).start()
    assert gw.proc is not None
    watch = WorkerWatch(gw.proc.pid)
    try:
        _kill_and_terminate(gw, watch, in_pause)
        watch.stop()
        pids = list(watch.seen)
        wait_for(
            lambda: not [p for p in pids if _alive(p)],
            message=lambda: f"no worker alive of {pids} ({[p for p in pids if _alive(p)]} are)",
        )
    finally:
        gw.kill()
        for pid in watch.seen:  # an orphan outlives the supervisor: don't leave it running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
