"""docs/http.md and /llms.txt: every documented example runs, and answers as shown.

One gateway in front of the built-in simulator (no config file: every alias is
served by the simulator). Each `bash` block of docs/http.md is run as written by
bash, with only the documented base URL swapped for the test gateway's, and
PROMETHEUS_API_KEY / PROMETHEUS_ADMIN_KEY / KEY_ID in its environment. curl must
exit 0 and its output must have the shape of the block that follows it: the same
JSON fields with the same types (a documented `null` may be anything), the same
event stream, the same status and header names, the same subtitle layout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import ADMIN_KEY, GatewayProcess
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
HTTP_MD = ROOT / "docs" / "http.md"
LLMS_TXT = ROOT / "docs" / "llms.txt"
AUDIO = ROOT / "tests" / "fixtures" / "audio" / "tone.m4a"
DOC_BASE = "http://127.0.0.1:8080"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$")


def examples() -> list[tuple[str, str, str]]:
    """(command, answer kind, documented answer) for each `bash` block."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(HTTP_MD.read_text())]
    found = []
    for (lang, body), (answer_lang, answer) in zip(blocks, blocks[1:], strict=False):
        if lang == "bash":
            assert answer_lang in {"json", "sse", "text", "srt", "http"}, body
            found.append((body, answer_lang, answer))
    return found


def example_id(example: tuple[str, str, str]) -> str:
    return " ".join(example[0].split())[:70]


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("http-docs")
    gw = GatewayProcess(work, None).start()
    try:
        key = gw.create_key("docs-reader")
        doomed = gw.create_key("to-revoke")
        shutil.copy(AUDIO, work / "meeting.m4a")
        yield {"gw": gw, "key": key["key"], "key_id": doomed["id"], "cwd": work}
    finally:
        gw.stop()


def run_example(env: dict[str, Any], command: str) -> str:
    gw: GatewayProcess = env["gw"]
    done = subprocess.run(
        ["bash", "-c", command.replace(DOC_BASE, gw.root_url)],
        cwd=env["cwd"],
        env={
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "PROMETHEUS_API_KEY": env["key"],
            "PROMETHEUS_ADMIN_KEY": ADMIN_KEY,
            "KEY_ID": env["key_id"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
    return done.stdout


def same_shape(documented: Any, actual: Any, where: str = "$") -> None:
    if documented is None:
        return
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for field, value in documented.items():
            assert field in actual, f"{where}: no field {field!r} in {sorted(actual)}"
            same_shape(value, actual[field], f"{where}.{field}")
    elif isinstance(documented, list):
        assert isinstance(actual, list), f"{where}: expected an array, got {actual!r}"
        for i, want in enumerate(documented):  # each shown item has one like it
            assert any(_fits(want, item) for item in actual), f"{where}[{i}]: none like it"
    elif isinstance(documented, bool):
        assert isinstance(actual, bool), f"{where}: expected a boolean, got {actual!r}"
    elif isinstance(documented, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), (
            f"{where}: expected a number, got {actual!r}"
        )
    else:
        assert isinstance(actual, type(documented)), f"{where}: expected a string, got {actual!r}"


def _fits(documented: Any, actual: Any) -> bool:
    try:
        same_shape(documented, actual)
    except AssertionError:
        return False
    return True


def events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def check_sse(documented: str, actual: str) -> None:
    want, got = events(documented), events(actual)
    assert got and got[-1] == "[DONE]" and want[-1] == "[DONE]", actual[-300:]
    chunks = [json.loads(e) for e in got[:-1]]
    assert all("error" not in c for c in chunks), actual[-300:]
    same_shape(json.loads(want[0]), chunks[0])  # the role chunk
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    same_shape(json.loads(want[-3]), finished[-1])  # the finish_reason chunk
    same_shape(json.loads(want[-2]), chunks[-1])  # the usage chunk


def line_kind(line: str) -> str:
    if line.isdigit():
        return "number"
    return "time" if SRT_TIME.match(line) else ("text" if line.strip() else "blank")


def check_srt(documented: str, actual: str) -> None:
    want = [line_kind(x) for x in documented.strip().splitlines()]
    got = [line_kind(x) for x in actual.strip().splitlines()]
    assert got[: len(want)] == want, actual


def check_http(documented: str, actual: str) -> None:
    want_status, *want_headers = documented.strip().splitlines()
    got_status, *got_headers = actual.strip().splitlines()
    assert got_status.split()[1] == want_status.split()[1], got_status
    got_names = {h.split(":", 1)[0].lower() for h in got_headers}
    for header in want_headers:
        assert header.split(":", 1)[0].lower() in got_names, (header, actual)


def test_every_route_is_documented() -> None:
    """An endpoint added without docs fails here: each route is in both pages."""
    from aiohttp import web

    from proxy.server.app import add_routes

    app = web.Application()
    add_routes(app)
    http_md = re.sub(r"\{\w+\}", "{}", HTTP_MD.read_text())
    llms = re.sub(r"\{\w+\}", "{}", LLMS_TXT.read_text())
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = re.sub(r"\{\w+\}", "{}", route.resource.canonical)
        assert f"{route.method} {path}" in http_md, f"{route.method} {path} not in docs/http.md"
        assert path in llms, f"{path} not in docs/llms.txt"


def test_llms_txt_is_served_as_kept_in_the_repo(docs_gateway: dict[str, Any]) -> None:
    out = run_example(docs_gateway, f"curl -sS -D - {DOC_BASE}/llms.txt")
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    assert head.split()[1] == "200"
    assert "content-type: text/plain; charset=utf-8" in head.lower()
    assert body == LLMS_TXT.read_text()
    for alias in (
        "spark",
        "lite",
        "core",
        "vision",
        "pulse",
        "surge",
        "atlas",
        "echo",
    ):
        assert f"prometheus-{alias}" in body


@pytest.mark.parametrize("example", examples(), ids=example_id)
def test_http_md_example(docs_gateway: dict[str, Any], example: tuple[str, str, str]) -> None:
    command, kind, documented = example
    if "/admin/usage" in command:  # the usage records of the examples before it
        gw: GatewayProcess = docs_gateway["gw"]
        wait_for(lambda: gw.db_rows("SELECT count(*) FROM requests")[0][0] > 0)
    actual = run_example(docs_gateway, command)
    if kind == "json":
        same_shape(json.loads(documented), json.loads(actual))
    elif kind == "sse":
        check_sse(documented, actual)
    elif kind == "srt":
        check_srt(documented, actual)
    elif kind == "http":
        check_http(documented, actual.replace("\r\n", "\n"))
    else:
        assert actual.startswith(documented.strip()), actual[:200]
