"""The counting process: `python -m proxy.metering.token_server --fd N`.

Started only by `proxy.metering.token_service.start` (see there for why it
exists and how the workers reach it), with the listening unix socket as file
descriptor N and a pipe as stdin. It answers each connection on a thread of
its own: one frame in (`{"op": "chat", "body", "text", "encoding"}` or
`{"op": "embedding", "input", "encoding"}`), one frame out (`{"ok": counts}`
or `{"error": "..."}`), counted by the same functions of
`proxy.metering.tokens` that a worker would use in-process. The encodings
named by `--preload` (those of the config's deployments) are loaded at start
on a background thread, any other on its first use; each once, and logged
(`tokenizer_loaded`, with this process's PID and RSS).

SIGINT and SIGTERM are ignored: the workers may still need counts while they
drain, and the gateway stops this process after them by closing the pipe. It
exits at EOF on stdin, which also comes when the gateway and all its workers
died without stopping it (nobody else holds the pipe's write end). It never
opens a network connection.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import threading
import time
from typing import Any

import orjson

from proxy.metering import tokens
from proxy.observability.logs import configure_logging, get_logger
from proxy.server.tuning import malloc_trim

IO_TIMEOUT_S = 30.0
MAX_FRAME = 1 << 30

_loaded: set[str] = set()
_load_lock = threading.Lock()
_trim = malloc_trim()


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _ensure_loaded(name: str) -> None:
    """Load an encoding before its first count, so that the load is timed, logged
    and its start-up garbage handed back to the OS."""
    if name in _loaded:
        return
    with _load_lock:
        if name in _loaded:
            return
        t0 = time.perf_counter()
        tokens.get_encoding(name)  # KeyError for an unknown name: the answer says so
        if _trim is not None:
            _trim()
        _loaded.add(name)
        get_logger().info(
            "tokenizer_loaded",
            encoding=name,
            seconds=round(time.perf_counter() - t0, 3),
            pid=os.getpid(),
            rss_mib=_rss_mib(),
        )


def _preload(names: list[str]) -> None:
    for name in names:
        try:
            _ensure_loaded(name)
        except Exception as exc:  # an unknown name, say: counts for it will say so too
            get_logger().warning("tokenizer_not_loaded", encoding=name, error=repr(exc))


def count(request: dict[str, Any]) -> Any:
    """One request's counts, as `tokens.count_locally` / `count_embedding_locally`
    would give them in-process."""
    op = request.get("op")
    encoding = request["encoding"]
    if op == "chat":
        _ensure_loaded(encoding)
        return [
            tokens.count_chat_input(request["body"], encoding),
            tokens.count_text(request["text"], encoding),
        ]
    if op == "embedding":
        _ensure_loaded(encoding)
        return tokens.count_embedding_input(request["input"], encoding)
    raise ValueError(f"unknown op {op!r}")


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = conn.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(IO_TIMEOUT_S)
        try:
            size = int.from_bytes(_read_exactly(conn, 4), "big")
            if size > MAX_FRAME:
                raise ValueError(f"request of {size} bytes")
            answer: dict[str, Any] = {"ok": count(orjson.loads(_read_exactly(conn, size)))}
        except Exception as exc:  # whatever it is, the worker counts in-process instead
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        data = orjson.dumps(answer)
        try:
            conn.sendall(len(data).to_bytes(4, "big") + data)
        except OSError:
            pass  # the worker gave up waiting (and counted in-process)


def _accept_forever(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.05)  # out of descriptors or memory for now: try again
                continue
            # a socket that cannot accept at all: better gone (the workers then fail
            # fast and count in-process) than present and silent
            get_logger().error("token_service_failed", error=str(exc), pid=os.getpid())
            os._exit(1)
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the gateway's token-counting process")
    parser.add_argument("--fd", type=int, required=True, help="the listening unix socket")
    parser.add_argument("--preload", default="", help="encodings to load at once, comma-separated")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    listener = socket.socket(fileno=args.fd)
    threading.Thread(target=_accept_forever, args=(listener,), daemon=True).start()
    get_logger().info("token_service_ready", pid=os.getpid(), rss_mib=_rss_mib())
    preload = [name for name in args.preload.split(",") if name]
    threading.Thread(target=_preload, args=(preload,), daemon=True).start()
    while os.read(0, 4096):  # until EOF: the gateway closed the pipe, or is gone
        pass
    _remove_socket(listener)
    get_logger().info("token_service_stopped", pid=os.getpid())
    return 0


def _remove_socket(listener: socket.socket) -> None:
    """Remove the socket and its private dir (the gateway does too when it can: this
    covers a gateway that died without stopping us)."""
    path = listener.getsockname()
    listener.close()
    if isinstance(path, str) and path:
        for remove, target in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):
            try:
                remove(target)
            except OSError:
                pass


if __name__ == "__main__":
    raise SystemExit(main())
