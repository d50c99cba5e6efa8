"""POST /v1/audio/transcriptions end to end, billed by the second.

The official `openai` SDK (Python here, npm in `test_the_npm_sdk_gets_every_format`)
asks for all five response formats, from two gateways:
- `echo_gateway` (this module's): prometheus-echo on the fake OpenAI upstream
  (`tests/upstream_app.py`, which answers json or verbose_json only, like
  an upstream that cannot make text, srt or vtt), and two custom
  transcription aliases for failover;
- the session gateway (conftest.py), whose prometheus-echo is the built-in
  simulator, with a JSON body limit of 1 MB (uploads are not bound by it).

Audio is made by the tests with soundfile (libsndfile, from the package index):
WAV, FLAC, MP3 and Ogg/Opus of known lengths, so the billed seconds are
checked to the millisecond of the real length. M4A and WebM need an
encoder that no package here ships: they are small fixtures in
`tests/fixtures/audio` (made once with ffmpeg, 2.345 s of the same tone).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import openai
import psutil
import pytest
import soundfile
from gateway_process import SHARED, GatewayProcess, closed_port_url
from upstream_app import UPSTREAM_KEY, Upstream
from waiting import wait_for

from proxy.api.transcript_formats import timestamp
from proxy.metering.audio import probe

PRICE_PER_SECOND = 0.006 / 60  # prometheus-echo: $0.006 per minute, pro rata
SAMPLE_RATE = 16000
MIB = 1024 * 1024
T = TypeVar("T")
# format: (soundfile format, subtype, seconds): lengths to the millisecond
MADE = {
    "wav": ("WAV", "PCM_16", 3.217),
    "flac": ("FLAC", "PCM_16", 2.5),
    "mp3": ("MP3", "MPEG_LAYER_III", 4.104),
    "ogg": ("OGG", "OPUS", 1.873),
}
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "audio"
FIXTURE_SECONDS = 2.345
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
TEXT_PLAIN = "text/plain; charset=utf-8"
# what the fake upstream says: six words in three segments over the duration
UPSTREAM_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
NPM_DIR = Path(__file__).resolve().parent / "npm"


def write_audio(path: Path, fmt: str, subtype: str, seconds: float) -> None:
    frames = round(seconds * SAMPLE_RATE)
    t = np.arange(frames) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))).astype(
        "float32"
    )
    soundfile.write(path, tone, SAMPLE_RATE, format=fmt, subtype=subtype)


def long_wav(path: Path, size: int) -> None:
    """A valid 16 kHz 16-bit mono WAV of about `size` bytes, without making it in memory."""
    frames = (size - 44) // 2
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16", format="WAV") as out:
        block = (0.2 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(
            "float32"
        )
        left = frames
        while left > 0:
            out.write(block[: min(left, SAMPLE_RATE)])
            left -= min(left, SAMPLE_RATE)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """name -> (file, real seconds): the made files and the fixtures."""
    folder = tmp_path_factory.mktemp("audio")
    files = {}
    for name, (fmt, subtype, seconds) in MADE.items():
        path = folder / f"speech.{name}"
        write_audio(path, fmt, subtype, seconds)
        files[name] = (path, seconds)
    files["m4a"] = (FIXTURES / "tone-alac.m4a", FIXTURE_SECONDS)
    files["webm"] = (FIXTURES / "tone.webm", FIXTURE_SECONDS)
    return files


def echo_config(upstream_url: str) -> str:
    def deployment(alias: str, url: str, model: str, weight: float = 1.0) -> str:
        return f"""
[[models.{alias}.deployments]]
provider = "openai"
base_url = "{url}"
api_key = "{UPSTREAM_KEY}"
model = "{model}"
weight = {weight}
"""

    return (
        """
[server]
max_body_mb = 1

[storage]
path = "gateway.db"
"""
        + deployment("prometheus-echo", upstream_url, "whisper-up")
        # failover: the first deployment reads the whole file, then fails (500)
        + deployment("echo-failover", upstream_url, "whisper-broken", 1e6)
        + deployment("echo-failover", upstream_url, "whisper-up", 1e-6)
        + deployment("echo-down", closed_port_url(), "whisper-down")
        + """
[models.echo-failover]
kind = "transcription"
[models.echo-failover.price]
audio_per_minute = 0.006

[models.echo-down]
kind = "transcription"
"""
    )


@pytest.fixture(scope="module")
def echo_gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    gw = GatewayProcess(tmp_path_factory.mktemp("echo-gateway"), echo_config(upstream.base_url))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def echo_key(echo_gateway: GatewayProcess) -> dict[str, Any]:
    return echo_gateway.create_key("echo-client")


@pytest.fixture()
def echo_client(echo_gateway: GatewayProcess, echo_key: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=echo_gateway.base_url, api_key=echo_key["key"], max_retries=0, timeout=60
    )


def usage_record(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    """The request's row in the gateway's `requests` table, once written."""
    columns = (
        "status, audio_seconds, audio_source, cost_usd, input_tokens, output_tokens,"
        " usage_source, model, endpoint, cached_tokens, reasoning_tokens"
    )
    rows = wait_for(
        lambda: gw.db_rows(f"SELECT {columns} FROM requests WHERE request_id = ?", request_id),
        message=f"the usage record of {request_id}",
    )
    return dict(zip([c.strip() for c in columns.split(",")], rows[0], strict=True))


def transcribe(
    client: openai.OpenAI, path: Path, fmt: str, **extra: Any
) -> tuple[Any, str, str, bytes]:
    """(the SDK's parsed result, content type, request id, raw body)."""
    with path.open("rb") as fh:
        raw = client.audio.transcriptions.with_raw_response.create(
            model=extra.pop("model", "prometheus-echo"), file=fh, response_format=fmt, **extra
        )
    return raw.parse(), raw.headers["content-type"], raw.headers["x-request-id"], raw.content


def clock(seconds: float, marker: str) -> str:
    ms = round(seconds * 1000)
    hours, minutes, secs = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{marker}{ms % 1000:03d}"


def srt_of(segments: list[tuple[float, float, str]]) -> str:
    return "".join(
        f"{i}\n{clock(s, ',')} --> {clock(e, ',')}\n{text.strip()}\n\n"
        for i, (s, e, text) in enumerate(segments, start=1)
    )


def vtt_of(segments: list[tuple[float, float, str]]) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{clock(s, '.')} --> {clock(e, '.')}\n{text.strip()}\n\n" for s, e, text in segments
    )


def upstream_segments(seconds: float) -> list[tuple[float, float, str]]:
    cuts = [0, 2, 4, 6]
    return [
        (
            round(seconds * cuts[i] / 6, 3),
            round(seconds * cuts[i + 1] / 6, 3),
            " " + " ".join(UPSTREAM_WORDS[cuts[i] : cuts[i + 1]]),
        )
        for i in range(3)
    ]


def assert_billed(gw: GatewayProcess, request_id: str, seconds: float, source: str) -> None:
    rec = usage_record(gw, request_id)
    assert rec["status"] == 200
    assert rec["audio_source"] == source
    assert abs(rec["audio_seconds"] - seconds) < 0.0005, (rec, seconds)  # to the millisecond
    assert rec["cost_usd"] == pytest.approx(rec["audio_seconds"] * PRICE_PER_SECOND, rel=1e-12)
    assert (rec["input_tokens"], rec["output_tokens"]) == (0, 0)
    assert rec["endpoint"] == "audio.transcriptions"


# -- the library reads the real length ----------------------------------------


@pytest.mark.parametrize("name", [*MADE, "m4a", "webm"])
def test_the_duration_is_read_from_the_file(
    audio: dict[str, tuple[Path, float]], name: str
) -> None:
    path, seconds = audio[name]
    with path.open("rb") as fh:
        found = probe(fh)
    assert found is not None
    if name == "webm":  # mutagen cannot read Matroska: the upstream's duration is used
        assert (found.format, found.seconds) == ("webm", None)
        return
    assert found.seconds is not None and abs(found.seconds - seconds) < 0.0005, found


def test_an_aac_m4a_reads_as_its_container_says() -> None:
    """AAC in MP4 states its length with the encoder's priming and padding
    (2.409 s here for 2.345 s of sound): billed as the container says."""
    with (FIXTURES / "tone.m4a").open("rb") as fh:
        found = probe(fh)
    assert found is not None and found.format == "m4a"
    assert found.seconds is not None and FIXTURE_SECONDS <= found.seconds < FIXTURE_SECONDS + 0.1


def test_timestamps_are_exact_to_the_millisecond() -> None:
    assert timestamp(1.5, ",") == "00:00:01,500"
    assert timestamp(1.5, ".") == "00:00:01.500"
    assert timestamp(3725.0625, ",") == "01:02:05,062"  # half a millisecond: to even
    assert timestamp(0.0, ".") == "00:00:00.000"
    assert timestamp(59.9996, ",") == "00:01:00,000"


# -- the SDK, every format, from the OpenAI-shaped upstream --------------------


@pytest.mark.parametrize("name", ["wav", "flac", "mp3", "ogg", "m4a"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_from_the_upstream(
    echo_gateway: GatewayProcess,
    echo_client: openai.OpenAI,
    upstream: Upstream,
    audio: dict[str, tuple[Path, float]],
    fmt: str,
    name: str,
) -> None:
    path, seconds = audio[name]
    parsed, content_type, rid, body = transcribe(echo_client, path, fmt)
    text = "Alpha bravo charlie delta echo foxtrot."
    segments = upstream_segments(seconds)
    if fmt == "json":
        assert content_type == "application/json"
        assert isinstance(parsed, openai.types.audio.Transcription)
        assert parsed.text == text
    elif fmt == "verbose_json":
        assert content_type == "application/json"
        assert isinstance(parsed, openai.types.audio.TranscriptionVerbose)
        assert (parsed.text, parsed.language) == (text, "english")
        assert abs(parsed.duration - seconds) < 0.0005
        got = [(s.start, s.end, s.text) for s in parsed.segments or []]
        assert got == segments
    else:
        assert content_type == TEXT_PLAIN
        assert isinstance(parsed, str)
        want = {"text": text + "\n", "srt": srt_of(segments), "vtt": vtt_of(segments)}[fmt]
        assert parsed == want
        assert body == want.encode()
    # the upstream got the deployment's model, the file whole, and the format it does
    sent = [r for r in upstream.received("/audio/transcriptions") if r["body"]["file"]]
    last = sent[-1]["body"]
    assert int(sent[-1]["headers"]["Content-Length"]) > path.stat().st_size  # not chunked
    assert sent[-1]["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    fields = dict(last["fields"])
    assert fields["model"] == "whisper-up"
    assert fields["response_format"] == ("json" if fmt in ("json", "text") else "verbose_json")
    assert last["file"]["size"] == path.stat().st_size
    assert last["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert last["file"]["filename"] == path.name
    assert_billed(echo_gateway, rid, seconds, "file")


def test_the_srt_and_vtt_shapes_exactly(
    echo_client: openai.OpenAI, audio: dict[str, tuple[Path, float]]
) -> None:
    """3.217 s in three segments, as OpenAI writes them."""
    path, _ = audio["wav"]
    srt = transcribe(echo_client, path, "srt")[0]
    assert srt == (
        "1\n00:00:00,000 --> 00:00:01,072\nalpha bravo\n\n"
        "2\n00:00:01,072 --> 00:00:02,145\ncharlie delta\n\n"
        "3\n00:00:02,145 --> 00:00:03,217\necho foxtrot\n\n"
    )
    vtt = transcribe(echo_client, path, "vtt")[0]
    assert vtt == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.072\nalpha bravo\n\n"
        "00:00:01.072 --> 00:00:02.145\ncharlie delta\n\n"
        "00:00:02.145 --> 00:00:03.217\necho foxtrot\n\n"
    )


def test_optional_fields_reach_the_upstream(
    echo_gateway: GatewayProcess,
    echo_client: openai.OpenAI,
    upstream: Upstream,
    audio: dict[str, tuple[Path, float]],
) -> None:
    path, seconds = audio["flac"]
    parsed, _, rid, _ = transcribe(
        echo_client,
        path,
        "verbose_json",
        language="en",
        prompt="A tone, then nothing.",
        temperature=0.2,
        timestamp_granularities=["word", "segment"],
    )
    last = upstream.received("/audio/transcriptions")[-1]["body"]
    assert [f for f in last["fields"] if f[0] != "response_format"] == [
        ("model", "whisper-up"),
        ("language", "en"),
        ("prompt", "A tone, then nothing."),
        ("temperature", "0.2"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
    ]
    assert [w.word for w in parsed.words or []] == UPSTREAM_WORDS
    assert parsed.words and parsed.words[-1].end == pytest.approx(seconds, abs=0.0005)
    assert_billed(echo_gateway, rid, seconds, "file")


def test_the_upstream_duration_where_the_file_does_not_say(
    echo_gateway: GatewayProcess, echo_client: openai.OpenAI, audio: dict[str, tuple[Path, float]]
) -> None:
    path, _ = audio["webm"]
    parsed, _, rid, body = transcribe(echo_client, path, "json", prompt="__duration_7.25__")
    # asked for verbose_json (json's usage.seconds is whole seconds, 8 here), json made of it
    assert json.loads(body) == {
        "text": "Alpha bravo charlie delta echo foxtrot.",
        "usage": {"type": "duration", "seconds": 8},
    }
    assert_billed(echo_gateway, rid, 7.25, "upstream")
    verbose, _, rid, _ = transcribe(echo_client, path, "srt", prompt="__duration_61.5__")
    assert verbose.endswith("00:00:41,000 --> 00:01:01,500\necho foxtrot\n\n")
    assert_billed(echo_gateway, rid, 61.5, "upstream")
    # neither the file nor the upstream says: nothing is billed, and the record says so
    _, _, rid, _ = transcribe(echo_client, path, "json", prompt="__no_duration__")
    assert usage_record(echo_gateway, rid)["audio_source"] == "none"
    assert usage_record(echo_gateway, rid)["cost_usd"] == 0


def test_the_file_duration_wins_over_the_upstreams(
    echo_gateway: GatewayProcess, echo_client: openai.OpenAI, audio: dict[str, tuple[Path, float]]
) -> None:
    path, seconds = audio["mp3"]
    parsed, _, rid, _ = transcribe(echo_client, path, "verbose_json", prompt="__duration_99__")
    assert parsed.duration == 99  # the upstream's answer reaches the client as it was
    assert_billed(echo_gateway, rid, seconds, "file")


def test_failover_sends_the_whole_file_again(
    echo_gateway: GatewayProcess,
    echo_client: openai.OpenAI,
    upstream: Upstream,
    audio: dict[str, tuple[Path, float]],
) -> None:
    path, seconds = audio["wav"]
    upstream.clear()
    parsed, _, rid, _ = transcribe(echo_client, path, "text", model="echo-failover")
    assert parsed == "Alpha bravo charlie delta echo foxtrot.\n"
    got = upstream.received("/audio/transcriptions")
    assert [dict(r["body"]["fields"])["model"] for r in got] == ["whisper-broken", "whisper-up"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [r["body"]["file"]["sha256"] for r in got] == [digest, digest]
    assert_billed(echo_gateway, rid, seconds, "file")


def test_an_upstream_failure_bills_nothing(
    echo_gateway: GatewayProcess, echo_client: openai.OpenAI, audio: dict[str, tuple[Path, float]]
) -> None:
    path, _ = audio["wav"]
    with pytest.raises(openai.APIStatusError) as caught:
        transcribe(echo_client, path, "json", model="echo-down")
    assert caught.value.status_code == 502
    rid = caught.value.response.headers["x-request-id"]
    rec = usage_record(echo_gateway, rid)
    assert (rec["status"], rec["audio_seconds"], rec["audio_source"], rec["cost_usd"]) == (
        502,
        0,
        "none",
        0,
    )


# -- the same through the simulator (the session gateway's prometheus-echo) ----


def sim_segments(verbose: Any) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text) for s in verbose.segments or []]


@pytest.mark.parametrize("name", ["wav", "flac", "mp3", "ogg", "m4a"])
def test_every_format_from_the_simulator(
    gateway: GatewayProcess,
    client: openai.OpenAI,
    audio: dict[str, tuple[Path, float]],
    name: str,
) -> None:
    path, seconds = audio[name]
    verbose, content_type, rid, _ = transcribe(client, path, "verbose_json")
    assert content_type == "application/json"
    assert_billed(gateway, rid, seconds, "file")
    segments = sim_segments(verbose)
    # deterministic, and spread over the file's real duration
    assert abs(verbose.duration - seconds) < 0.0005
    assert segments and segments[0][0] == 0.0
    assert abs(segments[-1][1] - seconds) < 0.0005
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False))
    assert verbose.text == "".join(s[2] for s in segments).strip()
    assert len(verbose.text.split()) == round(seconds * 2.5)
    again = transcribe(client, path, "verbose_json")[0]
    assert sim_segments(again) == segments
    for fmt, want in (
        ("json", None),
        ("text", verbose.text + "\n"),
        ("srt", srt_of(segments)),
        ("vtt", vtt_of(segments)),
    ):
        parsed, content_type, rid, _ = transcribe(client, path, fmt)
        if fmt == "json":
            assert content_type == "application/json"
            assert isinstance(parsed, openai.types.audio.Transcription)
            assert parsed.text == verbose.text
        else:
            assert content_type == TEXT_PLAIN
            assert parsed == want
        assert_billed(gateway, rid, seconds, "file")


def test_the_simulator_times_words_when_asked(
    client: openai.OpenAI, audio: dict[str, tuple[Path, float]]
) -> None:
    path, seconds = audio["ogg"]
    verbose = transcribe(client, path, "verbose_json", timestamp_granularities=["word"])[0]
    words = verbose.words or []
    assert [w.word for w in words] == verbose.text.rstrip(".").replace(".", "").split()
    assert words[0].start == 0 and abs(words[-1].end - seconds) < 0.0005
    assert all(w.start <= w.end for w in words)


def test_an_upload_is_not_bound_by_the_json_limit(
    gateway: GatewayProcess, client: openai.OpenAI, tmp_path: Path
) -> None:
    """The session gateway refuses JSON bodies over 1 MB; a 3 MB WAV is fine."""
    path = tmp_path / "three-mb.wav"
    long_wav(path, 3 * MIB)
    parsed, _, rid, _ = transcribe(client, path, "text")
    assert parsed.endswith(".\n")
    assert_billed(gateway, rid, (3 * MIB - 44) // 2 / SAMPLE_RATE, "file")


# -- usage --json ---------------------------------------------------------------


def test_usage_shows_audio_seconds_and_cost(
    echo_gateway: GatewayProcess, audio: dict[str, tuple[Path, float]]
) -> None:
    key = echo_gateway.create_key("echo-usage")
    client = openai.OpenAI(base_url=echo_gateway.base_url, api_key=key["key"], max_retries=0)
    total = 0.0
    for name in ("wav", "ogg", "ogg", "mp3"):
        path, seconds = audio[name]
        transcribe(client, path, "json")
        total += seconds
    wait_for(
        lambda: (
            echo_gateway.db_rows("SELECT COUNT(*) FROM requests WHERE key_id = ?", key["id"])[0][0]
            == 4
        ),
        message="four usage records",
    )
    (row,) = echo_gateway.usage(key["id"])
    assert (row["model"], row["requests"], row["errors"]) == ("prometheus-echo", 4, 0)
    assert row["audio_seconds"] == pytest.approx(11.067, abs=1e-9) == total
    # $0.006 a minute pro rata: 11.067 s cost $0.0011067, not 12 s nor a minute
    assert row["cost_usd"] == pytest.approx(0.0011067, rel=1e-12)
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)


# -- refusals --------------------------------------------------------------------


def raw_post(
    gw: GatewayProcess, key: str, body: bytes, content_type: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/v1/audio/transcriptions",
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def form(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    """A multipart body of (name, value, filename) parts, and its content type."""
    boundary = "gateway-test-boundary"
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("case", "parts", "status", "code", "param"),
    [
        (
            "no file",
            [("model", b"prometheus-echo", None)],
            400,
            "missing_required_parameter",
            "file",
        ),
        ("no model", [("file", b"RIFF", "a.wav")], 400, "missing_required_parameter", "model"),
        (
            "not audio",
            [("model", b"prometheus-echo", None), ("file", b"just some text\n" * 50, "a.wav")],
            400,
            "invalid_file_format",
            "file",
        ),
        (
            "bad format",
            [
                ("model", b"prometheus-echo", None),
                ("response_format", b"mp3", None),
                ("file", b"RIFF", "a.wav"),
            ],
            400,
            "invalid_value",
            "response_format",
        ),
        (
            "streamed",
            [
                ("model", b"prometheus-echo", None),
                ("stream", b"true", None),
                ("file", b"RIFF", "a.wav"),
            ],
            400,
            "invalid_value",
            "stream",
        ),
        (
            "temperature not a number",
            [
                ("model", b"prometheus-echo", None),
                ("temperature", b"warm", None),
                ("file", b"RIFF", "a.wav"),
            ],
            400,
            "invalid_value",
            "temperature",
        ),
        (
            "two files",
            [
                ("model", b"prometheus-echo", None),
                ("file", b"RIFF", "a.wav"),
                ("file", b"RIFF", "b.wav"),
            ],
            400,
            "invalid_form",
            None,
        ),
        (
            "a field not UTF-8",
            [("model", b"prometheus-\xff", None), ("file", b"RIFF", "a.wav")],
            400,
            "invalid_form",
            None,
        ),
        (
            "chat alias",
            [("model", b"prometheus-lite", None), ("file", b"RIFF", "a.wav")],
            400,
            "model_not_supported",
            "model",
        ),
        (
            "unknown alias",
            [("model", b"prometheus-nope", None), ("file", b"RIFF", "a.wav")],
            404,
            "model_not_found",
            "model",
        ),
    ],
)
def test_a_bad_form_says_what_is_wrong(
    echo_gateway: GatewayProcess,
    echo_key: dict[str, Any],
    upstream: Upstream,
    case: str,
    parts: list[tuple[str, bytes, str | None]],
    status: int,
    code: str,
    param: str | None,
) -> None:
    before = len(upstream.received("/audio/transcriptions"))
    body, content_type = form(*parts)
    got, headers, reply = raw_post(echo_gateway, echo_key["key"], body, content_type)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert (reply["error"]["code"], reply["error"]["param"]) == (code, param)
    assert headers["x-request-id"].startswith("req_")
    assert len(upstream.received("/audio/transcriptions")) == before  # nothing went upstream


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"model": "prometheus-echo"}', "application/json"),
        (b"--x\r\nnot a form at all", "multipart/form-data"),  # no boundary
        (
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\necho',
            "multipart/form-data; boundary=x",
        ),
    ],
    ids=["json", "no boundary", "cut short"],
)
def test_a_body_that_is_no_form_is_a_400(
    echo_gateway: GatewayProcess, echo_key: dict[str, Any], body: bytes, content_type: str
) -> None:
    got, headers, reply = raw_post(echo_gateway, echo_key["key"], body, content_type)
    assert got == 400, reply
    assert reply["error"]["code"] == "invalid_form"
    assert headers["x-request-id"].startswith("req_")


def test_a_batch_insert_stays_under_sqlites_variable_limit() -> None:
    from proxy.usage.rows import COLUMNS, ROWS_PER_INSERT

    assert len(COLUMNS) * ROWS_PER_INSERT <= 999


# -- 25 MB, and memory -------------------------------------------------------------


def rss(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    return int(psutil.Process(gw.proc.pid).memory_info().rss)


def peak_growth(gw: GatewayProcess, run: Callable[[], T]) -> tuple[T, int]:
    """`run()`'s result, and how far the gateway's RSS rose above where it was
    at the start while it ran (sampled every 10 ms)."""
    baseline = peak = rss(gw)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(gw))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, rss(gw)) - baseline


def spooled_files(gw: GatewayProcess) -> list[str]:
    """The gateway's open upload spools: files in the temp folder without a name
    (made unlinked, O_TMPFILE on Linux: `/tmp/#123 (deleted)`)."""
    assert gw.proc is not None
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    found = []
    for fd in Path(f"/proc/{gw.proc.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        name = target.removeprefix(tmp)
        if name != target and "/" not in name and target.endswith(" (deleted)"):
            found.append(target)
    return found


def test_26_mb_with_a_content_length_is_413_before_it_is_read(
    echo_gateway: GatewayProcess,
    echo_client: openai.OpenAI,
    upstream: Upstream,
    audio: dict[str, tuple[Path, float]],
    tmp_path: Path,
) -> None:
    transcribe(echo_client, audio["wav"][0], "json")  # warm: the path has run once
    path = tmp_path / "big.wav"
    long_wav(path, 26 * MIB)
    upstream.clear()

    def refused() -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            transcribe(echo_client, path, "json")
        return caught.value

    err, grown = peak_growth(echo_gateway, refused)
    assert err.status_code == 413
    assert err.response.json()["error"]["code"] == "request_too_large"
    assert err.response.headers["x-request-id"].startswith("req_")
    assert upstream.received("/audio/transcriptions") == []
    print(f"\n26 MB upload with Content-Length: gateway RSS peak +{grown / MIB:.2f} MiB")
    assert grown < 4 * MIB, f"the gateway's RSS grew {grown / MIB:.1f} MiB"


def chunked_upload(gw: GatewayProcess, key: str, size: int) -> tuple[int, dict[str, Any]]:
    """A form whose file is `size` bytes (a WAV header, then silence), sent with
    chunked transfer encoding: no Content-Length to judge it by."""
    boundary = "chunked-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        "prometheus-echo\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        block = bytes(MIB)
        left = size
        while left > 0:
            yield block[: min(left, MIB)]
            left -= MIB
        yield f"\r\n--{boundary}--\r\n".encode()

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/v1/audio/transcriptions",
            body=body(),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_26_mb_without_a_content_length_is_413_while_it_is_read(
    echo_gateway: GatewayProcess, echo_key: dict[str, Any], upstream: Upstream
) -> None:
    chunked_upload(echo_gateway, echo_key["key"], 2 * MIB)  # warm: a spool has been made
    upstream.clear()
    (status, reply), grown = peak_growth(
        echo_gateway, lambda: chunked_upload(echo_gateway, echo_key["key"], 26 * MIB)
    )
    assert status == 413, reply
    assert (reply["error"]["code"], reply["error"]["param"]) == ("request_too_large", "file")
    assert upstream.received("/audio/transcriptions") == []
    wait_for(lambda: spooled_files(echo_gateway) == [], message="the spool to be closed")
    print(f"\n26 MB chunked upload: gateway RSS peak +{grown / MIB:.2f} MiB")
    assert grown < 4 * MIB, f"the gateway's RSS grew {grown / MIB:.1f} MiB"


def test_50_concurrent_10_mb_uploads_keep_memory_bounded(
    echo_gateway: GatewayProcess,
    echo_client: openai.OpenAI,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    path = tmp_path / "ten-mb.wav"
    long_wav(path, 10 * MIB)
    seconds = (10 * MIB - 44) // 2 / SAMPLE_RATE
    transcribe(echo_client, path, "json")  # warm
    upstream.clear()
    baseline = rss(echo_gateway)

    def fifty() -> list[tuple[Any, str, str, bytes]]:
        with ThreadPoolExecutor(50) as pool:
            return list(pool.map(lambda _: transcribe(echo_client, path, "text"), range(50)))

    results, grown = peak_growth(echo_gateway, fifty)
    assert all(r[0] == "Alpha bravo charlie delta echo foxtrot.\n" for r in results)
    assert len(upstream.received("/audio/transcriptions")) == 50
    for _, _, rid, _ in results:
        assert_billed(echo_gateway, rid, seconds, "file")
    print(
        f"\n50 concurrent 10 MB uploads: gateway RSS {baseline / MIB:.1f} MiB before,"
        f" peak +{grown / MIB:.1f} MiB for 500 MiB uploaded"
    )
    assert grown < 100 * MIB, f"the gateway's RSS grew {grown / MIB:.1f} MiB"
    wait_for(lambda: spooled_files(echo_gateway) == [], message="every spool to be closed")


# -- an older database ---------------------------------------------------------------

OLD_REQUESTS_TABLE = """
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT NOT NULL,
    model TEXT NOT NULL, deployment TEXT NOT NULL, endpoint TEXT NOT NULL,
    status INTEGER NOT NULL, stream INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, audio_seconds REAL NOT NULL, cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL, ttft_ms REAL, usage_source TEXT NOT NULL, error TEXT
);
INSERT INTO requests VALUES ('req_old', 1700000000.0, 'key_old', 'prometheus-lite', 'sim:x',
    'chat.completions', 200, 0, 10, 20, 0.0, 0.000009, 12.5, NULL, 'upstream', NULL);
"""


def test_an_older_database_gets_the_new_columns(
    tmp_path: Path, audio: dict[str, tuple[Path, float]]
) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "gateway.db")
    old.executescript(OLD_REQUESTS_TABLE)
    old.close()
    gw = GatewayProcess(tmp_path, '[storage]\npath = "gateway.db"\n').start()
    try:
        columns = {row[1] for row in gw.db_rows("PRAGMA table_info(requests)")}
        assert {"audio_source", "cached_tokens", "reasoning_tokens"} <= columns
        assert gw.db_rows(
            "SELECT audio_source, cached_tokens, reasoning_tokens FROM requests"
            " WHERE request_id = 'req_old'"
        ) == [(None, 0, 0)]
        key = gw.create_key("after-migration")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
        path, seconds = audio["flac"]
        _, _, rid, _ = transcribe(client, path, "json")
        assert_billed(gw, rid, seconds, "file")
        rec = usage_record(gw, rid)
        assert (rec["cached_tokens"], rec["reasoning_tokens"]) == (0, 0)
        assert {row["key_id"] for row in gw.usage()} == {"key_old", key["id"]}
    finally:
        gw.stop()


# -- OpenAI's schemas ----------------------------------------------------------------

SPEC_PATH = SHARED / "openai-openapi.yaml"


@pytest.mark.skipif(not SPEC_PATH.is_file(), reason=f"no OpenAPI description at {SPEC_PATH}")
def test_replies_validate_against_openais_schemas(
    echo_client: openai.OpenAI,
    client: openai.OpenAI,
    echo_key: dict[str, Any],
    echo_gateway: GatewayProcess,
    audio: dict[str, tuple[Path, float]],
) -> None:
    from test_openapi_conformance import assert_conforms

    for which, sdk in (("upstream", echo_client), ("sim", client)):
        for name in ("wav", "webm"):
            path, _ = audio[name]
            body = transcribe(sdk, path, "json")[3]
            assert_conforms("CreateTranscriptionResponseJson", json.loads(body), f"{which} json")
            body = transcribe(sdk, path, "verbose_json", timestamp_granularities=["word"])[3]
            verbose = json.loads(body)
            assert verbose["words"] and verbose["segments"]
            assert_conforms("CreateTranscriptionResponseVerboseJson", verbose, f"{which} verbose")
    for case in ([("model", b"prometheus-echo", None)], [("file", b"RIFF", "a.wav")]):
        body, content_type = form(*case)
        _, _, reply = raw_post(echo_gateway, echo_key["key"], body, content_type)
        assert_conforms("ErrorResponse", reply, "a bad form's error")
    status, reply = chunked_upload(echo_gateway, echo_key["key"], 26 * MIB)
    assert status == 413
    assert_conforms("ErrorResponse", reply, "a file over 25 MB")


# -- the npm SDK -----------------------------------------------------------------------


def npm_sdk() -> None:
    """Make sure tests/npm has the openai package (npm ci from its lock file), or skip."""
    if (NPM_DIR / "node_modules" / "openai" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to run the openai npm package")
    done = subprocess.run(
        [npm, "ci", "--prefix", str(NPM_DIR), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"npm ci could not install the openai package: {done.stderr[-500:]}")


def test_the_npm_sdk_gets_every_format(
    echo_gateway: GatewayProcess, echo_key: dict[str, Any], audio: dict[str, tuple[Path, float]]
) -> None:
    npm_sdk()
    path, seconds = audio["mp3"]
    done = subprocess.run(
        [
            "node",
            str(NPM_DIR / "transcribe.mjs"),
            echo_gateway.base_url,
            echo_key["key"],
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    segments = upstream_segments(seconds)
    text = "Alpha bravo charlie delta echo foxtrot."
    assert got["json"]["body"] == {"text": text, "usage": {"type": "duration", "seconds": 5}}
    assert got["verbose_json"]["body"]["duration"] == seconds
    assert [
        (s["start"], s["end"], s["text"]) for s in got["verbose_json"]["body"]["segments"]
    ] == segments
    assert got["text"]["body"] == text + "\n"
    assert got["srt"]["body"] == srt_of(segments)
    assert got["vtt"]["body"] == vtt_of(segments)
    for fmt in FORMATS:
        want = "application/json" if fmt in ("json", "verbose_json") else TEXT_PLAIN
        assert got[fmt]["contentType"] == want
        assert_billed(echo_gateway, got[fmt]["requestId"], seconds, "file")


def test_a_client_gone_mid_upload_leaves_no_spool(
    echo_gateway: GatewayProcess, echo_key: dict[str, Any], upstream: Upstream
) -> None:
    import socket

    upstream.clear()
    boundary = "gone-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"prometheus-echo\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="gone.wav"\r\n\r\n'
    ).encode()
    with socket.create_connection(("127.0.0.1", echo_gateway.port), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {echo_key['key']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        piece = head + bytes(MIB)
        for _ in range(3):  # 3 MiB: past the in-memory part, so a temp file holds it
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            piece = bytes(MIB)
        wait_for(lambda: spooled_files(echo_gateway), message="the upload to be spooled")
    wait_for(lambda: spooled_files(echo_gateway) == [], message="the spool to be closed")
    assert upstream.received("/audio/transcriptions") == []
