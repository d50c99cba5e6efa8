"""Sending a transcription to an OpenAI-compatible upstream, and reading its answer.

`proxy.providers.openai.provider.OpenAIProvider.transcription` calls
`post_transcription` with its shared session. The upstream gets a multipart
form: `model` (the deployment's own name, CONTRACT.md), the client's other
fields in their order, `response_format` as the gateway wants it
(`json` or `verbose_json`), and the file, streamed from the spool
(`UploadPayload`, its length known so the request has a Content-Length)
and never held whole. Each attempt builds its form anew, so failover
re-sends the file from its first byte.

The answer must be a JSON transcription (a `text` string) within
`max_reply_mb`; the duration it states (`duration`, or a duration-type
`usage`) is the reply's `audio_seconds`, which the meter bills when the
file itself did not say.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from proxy.config.model import Deployment
from proxy.providers.base import (
    AudioUpload,
    FailedReply,
    Reply,
    TranscriptionReply,
    TranscriptionRequest,
    UpstreamAnswer,
    UpstreamBadReply,
)
from proxy.providers.openai.replies import MIB, read_all
from proxy.providers.upstream_http import UpstreamHttp

Failed = Callable[[UpstreamAnswer, Deployment], Awaitable[FailedReply]]


class UploadPayload(aiohttp.Payload):
    """The spooled upload as a multipart part, written piece by piece."""

    def __init__(self, upload: AudioUpload) -> None:
        super().__init__(upload, content_type=upload.content_type or "application/octet-stream")
        self._upload = upload
        self._size = upload.size

    async def write(self, writer: AbstractStreamWriter) -> None:
        async for chunk in self._upload.chunks():
            await writer.write(chunk)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an audio upload is not text")


def upstream_form(deployment: Deployment, request: TranscriptionRequest) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("model", deployment.model)
    for name, value in request.fields:
        form.add_field(name, value)
    form.add_field("response_format", request.upstream_format)
    upload = request.upload
    form.add_field(
        "file",
        UploadPayload(upload),
        filename=upload.filename or "audio",
        content_type=upload.content_type or "application/octet-stream",
    )
    return form


def _seconds(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def reported_seconds(data: dict[str, Any]) -> float | None:
    """verbose_json's `duration`, else a duration-type `usage` (whisper-1's json)."""
    duration = _seconds(data.get("duration"))
    if duration is not None:
        return duration
    usage = data.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        return _seconds(usage.get("seconds"))
    return None


class JsonTranscriptionReply(TranscriptionReply):
    def __init__(self, resp: UpstreamAnswer, deployment: Deployment) -> None:
        self._resp = resp
        self._deployment = deployment
        self.status = resp.status

    async def body(self) -> bytes:
        raw = await read_all(self._resp, int(self._deployment.max_reply_mb * MIB))
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadReply(f"transcription not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise UpstreamBadReply("transcription without a 'text' string")
        self.audio_seconds = reported_seconds(data)
        return raw

    def close(self) -> None:
        self._resp.close()


async def post_transcription(
    http: UpstreamHttp,
    url: URL,
    deployment: Deployment,
    request: TranscriptionRequest,
    failed: Failed,
) -> Reply:
    headers = {"Authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}
    resp = await http.post(deployment, url, upstream_form(deployment, request), headers)
    if not 200 <= resp.status < 300:
        return await failed(resp, deployment)
    return JsonTranscriptionReply(resp, deployment)
