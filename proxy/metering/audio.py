"""How long an uploaded audio file is, read from the file itself.

`proxy.api.audio` calls `probe_upload` once the form is spooled
(`proxy.http.multipart.Upload`), before any upstream sees the file: the
answer decides whether the file is audio at all (not audio: a 400) and how
many seconds the meter bills (`proxy.metering.meter`, source `file`).

The reading is mutagen's (headers and frame tables only, never a decode),
limited to the containers OpenAI accepts: WAV, MP3, FLAC, Ogg
(Vorbis, Opus, FLAC), MP4/M4A. WebM (Matroska) is audio too, but mutagen
cannot read it: it is recognised by its EBML signature and its duration is
left to the upstream's report. It runs on a thread: it reads the file.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import cache
from typing import IO, TYPE_CHECKING

from proxy.http.errors import GatewayError
from proxy.http.multipart import Upload

if TYPE_CHECKING:
    import mutagen


@cache
def formats() -> dict[type[mutagen.FileType], str]:
    """The containers mutagen reads, and the format each one is. Imported at the
    first upload: mutagen is ~2 MiB a worker holds whether or not it serves audio."""
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    return {
        WAVE: "wav",
        MP3: "mp3",
        FLAC: "flac",
        OggVorbis: "ogg",
        OggOpus: "opus",
        OggFLAC: "ogg",
        MP4: "m4a",
    }


EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM
MAX_SECONDS = 7 * 24 * 3600.0  # a length past this is a broken header, not audio
SUPPORTED = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"


@dataclass(frozen=True, slots=True)
class AudioProbe:
    format: str  # wav, mp3, flac, ogg, opus, m4a, webm
    seconds: float | None  # None: the container does not say (WebM)


def not_audio() -> GatewayError:
    return GatewayError(
        400,
        f"Invalid file format: the file is not audio the gateway can read. "
        f"Supported formats: {SUPPORTED}.",
        code="invalid_file_format",
        param="file",
    )


def probe(fileobj: IO[bytes]) -> AudioProbe | None:
    """The file's format and duration, or None when it is not audio."""
    head = fileobj.read(64)
    fileobj.seek(0)
    if head.startswith(EBML_MAGIC):
        if b"webm" in head or b"matroska" in head:
            return AudioProbe("webm", None)
        return None
    import mutagen

    known = formats()
    try:
        found = mutagen.File(fileobj, options=list(known))
    except Exception:  # noqa: BLE001 - hostile bytes may break a parser any way they like
        return None
    info = getattr(found, "info", None)
    length = getattr(info, "length", None)
    if found is None or not isinstance(length, int | float):
        return None
    if not math.isfinite(length) or not 0 <= length <= MAX_SECONDS:
        return None
    return AudioProbe(known.get(type(found), "audio"), float(length))


async def probe_upload(upload: Upload) -> AudioProbe:
    """`probe` on a thread; a file that is not audio is a 400."""
    found = await asyncio.to_thread(lambda: probe(upload.open_for_reading()))
    if found is None:
        raise not_audio()
    return found
