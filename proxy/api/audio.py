"""POST /v1/audio/transcriptions: the audio file in, a transcript in five formats out.

The form is read with its file spooled (`proxy.http.multipart`, 413 past 25
MB), the alias resolved, and the file's duration read from the file itself
(`proxy.metering.audio`; not audio: a 400) before any upstream sees it. The
upstream is asked for `json` or `verbose_json` (`proxy.api.transcript_formats`),
through `proxy.routing.failover` like every operation, and the client gets
the format it asked for. A `Meter` in audio mode makes the usage record:
the seconds read from the file, or where the file did not say (WebM) the
duration the upstream reported, at the alias's per-minute price, never
rounded; `audio_source` says which.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable

from aiohttp import web

from proxy.api.transcript_formats import FORMATS, render, upstream_format
from proxy.auth.admission import admit
from proxy.config.model import Deployment
from proxy.http import errors
from proxy.http.multipart import Form, Upload, read_form
from proxy.metering.audio import probe_upload
from proxy.metering.meter import Meter
from proxy.providers.base import Provider, Reply, TranscriptionReply, TranscriptionRequest
from proxy.routing.failover import call_upstream, read_body
from proxy.routing.router import resolve_route
from proxy.server.state import STATE

ENDPOINT = "audio.transcriptions"
# fields the gateway sets itself upstream (`model`: the deployment's name)
OWN_FIELDS = ("model", "response_format", "stream")


def _check_fields(form: Form) -> tuple[str, str]:
    """(alias, response_format), or the 400 that says what is wrong."""
    alias = form.get("model")
    if alias is None:
        raise errors.missing_param("model")
    if not alias:
        raise errors.invalid_param("model", "'model' must be a non-empty string.")
    response_format = form.get("response_format") or "json"
    if response_format not in FORMATS:
        raise errors.invalid_param(
            "response_format", f"'response_format' must be one of {', '.join(FORMATS)}."
        )
    stream = form.get("stream")
    if stream is not None and stream.strip().lower() not in ("", "false", "0"):
        raise errors.invalid_param(
            "stream", "Streamed transcriptions are not supported: leave 'stream' out."
        )
    temperature = form.get("temperature")
    if temperature is not None and not _is_number(temperature):
        raise errors.invalid_param("temperature", "'temperature' must be a number.")
    return alias, response_format


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


async def _no_tokens(_dep: Deployment, _text: str) -> tuple[int, int]:
    return 0, 0


async def create_transcription(request: web.Request) -> web.Response:
    form = await read_form(request)
    try:
        assert form.upload is not None  # read_form refuses a form without a file
        return await _transcribe(request, form, form.upload)
    finally:
        form.close()


async def _transcribe(request: web.Request, form: Form, upload: Upload) -> web.Response:
    state = request.app[STATE]
    alias, response_format = _check_fields(form)
    route = resolve_route(state.routes, request["key"], alias, "transcription")
    await admit(request, route, None)  # rpm, and a budget already spent
    probe = await probe_upload(upload)
    transcription = TranscriptionRequest(
        alias=alias,
        fields=tuple((k, v) for k, v in form.fields if k not in OWN_FIELDS),
        upload=upload,
        response_format=response_format,
        upstream_format=upstream_format(response_format, probe.seconds is not None),
        file_seconds=probe.seconds,
    )

    def call(provider: Provider, dep: Deployment) -> Awaitable[Reply]:
        return provider.transcription(
            dep, transcription
        )  # no coroutine of its own: one await level less

    async with Meter(state.usage, request, route, ENDPOINT, False, _no_tokens, audio=True) as meter:
        reply, dep = await call_upstream(state.providers, route, call, state.health)
        meter.attach(dep, reply)
        if probe.seconds is not None:  # the upstream took the file: its length is billed
            meter.bill_audio(probe.seconds, "file")
        payload = await read_body(reply)
        reported = reply.audio_seconds if isinstance(reply, TranscriptionReply) else None
        if probe.seconds is None and reported is not None:
            meter.bill_audio(reported, "upstream")
        body, content_type = render(payload, response_format, transcription.upstream_format)
        await meter.settle()
    return web.Response(body=body, headers={"Content-Type": content_type})
