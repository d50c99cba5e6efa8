"""The five response formats of a transcription, made from what the upstream sent.

`proxy.api.audio` asks every upstream for the least it needs
(`upstream_format`): `json` for `json` and `text`, `verbose_json` for
`verbose_json`, `srt` and `vtt`, since only it carries segment timings. The
text formats are then made here (`render`), the same way for every
deployment, so every format works on every upstream, including those that
answer only JSON (the gpt-4o-transcribe family does not do `verbose_json`
but still serves `text` through the gateway). JSON formats pass through as the
upstream sent them. One exception: when the gateway could not read the
file's length (WebM), it asks for `verbose_json` whatever the client wants,
for its exact `duration` (json's `usage.seconds` is rounded up to whole
seconds), and makes `json` from it: `text`, and `usage` where it was sent.

The text shapes are OpenAI's (Whisper's writers): `text` is the transcript
and a newline; `srt` numbers each segment, `HH:MM:SS,mmm --> HH:MM:SS,mmm`,
the segment's text stripped, a blank line; `vtt` is `WEBVTT`, a blank line,
then `HH:MM:SS.mmm --> HH:MM:SS.mmm` blocks. All three are
`text/plain; charset=utf-8`, as OpenAI sends them.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from proxy.http import errors
from proxy.http.errors import GatewayError

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


def upstream_format(response_format: str, length_known: bool) -> str:
    """What to ask the upstream for to give the client `response_format`."""
    if response_format in ("json", "text") and length_known:
        return "json"
    return "verbose_json"


def _bad(detail: str) -> GatewayError:
    return errors.upstream_bad_reply(f"transcription reply: {detail}")


def transcript_object(payload: bytes) -> dict[str, Any]:
    """The upstream's JSON, checked to be a transcription (a `text` string)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _bad("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise _bad("no 'text' string")
    return data


def timestamp(seconds: float, marker: str) -> str:
    """`HH:MM:SS,mmm` (marker ',') or `HH:MM:SS.mmm` (marker '.'), to the millisecond."""
    total_ms = round(seconds * 1000)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _segments(data: dict[str, Any]) -> list[tuple[float, float, str]]:
    raw = data.get("segments")
    if not isinstance(raw, list):
        raise _bad("no 'segments' to time the text with")
    out = []
    for seg in raw:
        start = seg.get("start") if isinstance(seg, dict) else None
        end = seg.get("end") if isinstance(seg, dict) else None
        text = seg.get("text") if isinstance(seg, dict) else None
        if not (_time(start) and _time(end) and isinstance(text, str)):
            raise _bad("a segment without a start, an end or its text")
        out.append((float(start or 0), float(end or 0), text.strip().replace("-->", "->")))
    return out


def _time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def render(payload: bytes, response_format: str, asked: str) -> tuple[bytes, str]:
    """The body and content type for the client, from the upstream's JSON reply
    to the format the gateway `asked` for."""
    if response_format == asked:  # json or verbose_json, checked by the provider's reply
        return payload, JSON_TYPE
    data = transcript_object(payload)
    if response_format == "json":
        made = {"text": data["text"]}
        if isinstance(data.get("usage"), dict):
            made["usage"] = data["usage"]
        return orjson.dumps(made), JSON_TYPE
    if response_format == "text":
        return (data["text"] + "\n").encode(), TEXT_TYPE
    if response_format == "srt":
        blocks = [
            f"{i}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n\n"
            for i, (start, end, text) in enumerate(_segments(data), start=1)
        ]
        return "".join(blocks).encode(), TEXT_TYPE
    blocks = [
        f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{text}\n\n"
        for start, end, text in _segments(data)
    ]
    return ("WEBVTT\n\n" + "".join(blocks)).encode(), TEXT_TYPE
