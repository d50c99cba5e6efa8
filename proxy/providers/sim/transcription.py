"""The simulator's transcriptions: deterministic text, timed over the real duration.

Served in-process by `proxy.providers.sim.provider`. The words depend only on
the file (its size and duration), so the same upload always gets the same
transcript; about `WORDS_PER_SECOND` of them, in segments of up to
`WORDS_PER_SEGMENT`, spread evenly from 0 to the duration the gateway read
from the file (`TranscriptionRequest.file_seconds`). Where the file did not
say (WebM), the simulator guesses from the size at `GUESS_BYTES_PER_SECOND`
(a 32 kbit/s voice recording) and reports that, as an upstream reports what
it decoded. Replies are OpenAI's `json` or `verbose_json` objects, with
`words` when `timestamp_granularities[]` asks for them, and whisper-1's
duration-type `usage`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from proxy.providers.base import TranscriptionRequest
from proxy.providers.sim.engine import WORDS

WORDS_PER_SECOND = 2.5
WORDS_PER_SEGMENT = 8
GUESS_BYTES_PER_SECOND = 4000
LANGUAGES = {
    "en": "english",
    "de": "german",
    "es": "spanish",
    "fr": "french",
    "it": "italian",
    "ja": "japanese",
    "nl": "dutch",
    "pt": "portuguese",
    "zh": "chinese",
}


def duration_of(request: TranscriptionRequest) -> float:
    if request.file_seconds is not None:
        return request.file_seconds
    return round(request.upload.size / GUESS_BYTES_PER_SECOND, 3)


def _words(seed: int, count: int) -> list[str]:
    words = [WORDS[(seed + i * 7) % len(WORDS)].strip() for i in range(count)]
    if words:
        words[0] = words[0].capitalize()
    return words


def transcript(request: TranscriptionRequest) -> dict[str, Any]:
    """The `verbose_json` object for the request (`json` is cut from it)."""
    duration = duration_of(request)
    seed_text = f"{request.upload.size}:{duration:.3f}".encode()
    seed = int.from_bytes(hashlib.sha256(seed_text).digest()[:4], "little")
    count = round(duration * WORDS_PER_SECOND) if duration > 0 else 0
    words = _words(seed, max(count, 1) if duration > 0 else 0)  # none for silence of 0 s
    step = duration / len(words) if words else 0.0
    spans = [
        (round(i * step, 3), round(min((i + 1) * step, duration), 3)) for i in range(len(words))
    ]
    timed = [{"word": w, "start": s, "end": e} for w, (s, e) in zip(words, spans, strict=True)]
    segments: list[dict[str, Any]] = []
    for n, first in enumerate(range(0, len(words), WORDS_PER_SEGMENT)):
        group = words[first : first + WORDS_PER_SEGMENT]
        start, end = spans[first][0], spans[first + len(group) - 1][1]
        text = " " + " ".join(group) + "."
        segments.append(
            {
                "id": n,
                "seek": int(start * 100),
                "start": start,
                "end": end,
                "text": text,
                "tokens": [50364 + (seed + first + k) % 1000 for k in range(len(group))],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
    fields = dict(request.fields)
    language = fields.get("language") or "en"
    result: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGES.get(language, language),
        "duration": round(duration, 3),
        "text": "".join(s["text"] for s in segments).strip(),
        "segments": segments,
    }
    granularities = {v for k, v in request.fields if k.startswith("timestamp_granularities")}
    if "word" in granularities:
        result["words"] = timed
    result["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
    return result


def reply_object(request: TranscriptionRequest) -> tuple[dict[str, Any], float]:
    """What the simulator answers in `request.upstream_format`, and its duration."""
    full = transcript(request)
    if request.upstream_format == "verbose_json":
        return full, full["duration"]
    return {"text": full["text"], "usage": full["usage"]}, full["duration"]
