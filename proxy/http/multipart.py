"""Reading a multipart form (POST /v1/audio/transcriptions) without holding it whole.

`proxy.api.audio` calls `read_form` first thing. The `file` part is streamed
into an `Upload`: kept in memory up to `SPOOL_MEMORY_BYTES`, then in an
anonymous temporary file (writes off the event loop), with its bytes counted
as they arrive, so a file over `MAX_FILE_BYTES` (OpenAI's 25 MB) is refused
with a 413 at the byte that crosses the line. The other fields are small
text, `MAX_FIELD_BYTES` at most all together. Providers then read the upload
back piece by piece (`Upload.chunks`, positional reads, so every retry starts
over) and the duration probe (`proxy.metering.audio`) reads it on a thread.

`proxy.http.middleware` refuses a body whose Content-Length is over
`MAX_FORM_BYTES` before any of it is read. aiohttp's `client_max_size` (the
JSON limit, `max_body_mb`) bounds `request.read()` and `request.post()` only,
never `request.multipart()`: the bounds here are the only ones that apply.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

from aiohttp import BodyPartReader, web

from proxy.http import errors
from proxy.http.errors import GatewayError

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
MAX_FILE_BYTES = 25 * 1024 * 1024  # OpenAI's limit: 26,214,400 bytes
MAX_FIELD_BYTES = 64 * 1024  # every field but the file, together
MAX_FORM_BYTES = MAX_FILE_BYTES + MAX_FIELD_BYTES  # the whole body, boundaries included
SPOOL_MEMORY_BYTES = 256 * 1024  # more than this of a file goes to a temp file
READ_CHUNK = 64 * 1024


def file_too_large() -> GatewayError:
    return GatewayError(
        413,
        f"Maximum content size limit ({MAX_FILE_BYTES}) exceeded: "
        "the audio file must be 25 MB or smaller.",
        code="request_too_large",
        param="file",
    )


def fields_too_large() -> GatewayError:
    return GatewayError(
        413,
        f"The form's fields other than 'file' exceed {MAX_FIELD_BYTES} bytes.",
        code="request_too_large",
    )


def bad_form(detail: str) -> GatewayError:
    return GatewayError(400, f"Could not read the multipart form: {detail}", code="invalid_form")


class Upload:
    """The uploaded file: in memory while small, then in a temp file (unlinked at once)."""

    def __init__(self, filename: str, content_type: str) -> None:
        self.filename = filename
        self.content_type = content_type
        self.size = 0
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None:
            self._memory += chunk
            if len(self._memory) > SPOOL_MEMORY_BYTES:
                held, self._memory = self._memory, bytearray()
                self._file = await asyncio.to_thread(_spill, held)
        else:
            await asyncio.to_thread(self._file.write, chunk)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file from its first byte; each call starts over (failover re-sends it)."""
        if self._file is None:
            view = memoryview(self._memory)
            for start in range(0, len(view), READ_CHUNK):
                yield bytes(view[start : start + READ_CHUNK])
            return
        fd = self._file.fileno()
        offset = 0
        while offset < self.size:
            piece = await asyncio.to_thread(os.pread, fd, READ_CHUNK, offset)
            if not piece:
                return
            offset += len(piece)
            yield piece

    def open_for_reading(self) -> IO[bytes]:
        """A file object at the first byte, for a reader on a thread (the probe).

        The temp file itself, rewound: use it before `chunks()` is, not beside it
        (`chunks()` reads by offset and never moves it, so the reverse is fine)."""
        if self._file is None:
            return io.BytesIO(self._memory)
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()


def _spill(held: bytearray) -> IO[bytes]:
    spool = tempfile.TemporaryFile(prefix="prometheus-upload-")
    spool.write(held)
    return spool


class Form:
    """A multipart form read: its text fields in order, and the file."""

    def __init__(self, fields: list[tuple[str, str]], upload: Upload | None) -> None:
        self.fields = fields
        self.upload = upload

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.fields if key == name), None)

    def close(self) -> None:
        if self.upload is not None:
            self.upload.close()


async def read_form(request: web.Request) -> Form:
    """The form, its file spooled; 400 when it cannot be read, 413 past the bounds."""
    if request.content_type != "multipart/form-data":
        raise bad_form("the body must be multipart/form-data, with the audio as the 'file' field")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise file_too_large()
    fields: list[tuple[str, str]] = []
    upload: Upload | None = None
    try:
        reader = await request.multipart()
        field_bytes = 0
        while True:
            part: Any = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise bad_form("nested multipart parts are not accepted")
            name = part.name or ""
            if name == "file":
                if upload is not None:
                    raise bad_form("send one 'file' field only")
                upload = Upload(part.filename or "", part.headers.get("Content-Type", ""))
                await _spool(part, upload)
                continue
            value = bytearray()
            while chunk := await part.read_chunk(READ_CHUNK):
                field_bytes += len(chunk)
                if field_bytes > MAX_FIELD_BYTES:
                    raise fields_too_large()
                value += chunk
            fields.append((name, value.decode("utf-8")))
    except BaseException as exc:
        if upload is not None:
            upload.close()
        if isinstance(exc, GatewayError | asyncio.CancelledError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, UnicodeDecodeError):
            raise bad_form("a field is not UTF-8 text") from None
        raise bad_form(str(exc) or type(exc).__name__) from None
    if upload is None:
        raise errors.missing_param("file")
    return Form(fields, upload)


async def _spool(part: BodyPartReader, upload: Upload) -> None:
    while chunk := await part.read_chunk(READ_CHUNK):
        if upload.size + len(chunk) > MAX_FILE_BYTES:
            raise file_too_large()
        await upload.write(chunk)
