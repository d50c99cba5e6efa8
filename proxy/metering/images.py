"""Image input tokens, by OpenAI's published tile formula, for local counts.

Called by `proxy.metering.tokens` when the gateway must count a vision
request itself (a stream the client left, an upstream without usage). The
upstream's own report is always preferred; this is the fallback.

The formula (OpenAI's vision guide, GPT-4o / GPT-4.1 family): `detail: low`
costs 85 tokens. Otherwise the image is scaled to fit in 2048 x 2048, then so
that its shortest side is at most 768 px, and costs 85 + 170 per 512 px tile.
A data URL's dimensions are read from its first bytes only (PNG, GIF, WebP,
JPEG headers), decoding just the base64 needed, never the whole image. The
gateway never fetches a client's http(s) URL: such an image, or one whose
header cannot be read, is counted as a 1024 x 1024 image at its detail.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

LOW_DETAIL_TOKENS = 85
BASE_TOKENS = 85
TILE_TOKENS = 170
UNKNOWN_SIZE = (1024, 1024)  # what an image we cannot measure is counted as
MAX_HEADER_BYTES = 1 << 20  # how far into a JPEG we follow its segments for the size


def tile_tokens(width: int, height: int, detail: str = "high") -> int:
    """Input tokens of one image of this size at this detail."""
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if width <= 0 or height <= 0:
        return BASE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return BASE_TOKENS + TILE_TOKENS * tiles


class _DataUrlBytes:
    """Random access to the bytes of a base64 data URL, decoding only what is read."""

    def __init__(self, b64: str) -> None:
        self._b64 = b64

    def read(self, offset: int, size: int) -> bytes:
        start = (offset // 3) * 4
        end = ((offset + size + 2) // 3) * 4
        chunk = self._b64[start:end]
        chunk += "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(chunk, validate=False)
        except (binascii.Error, ValueError):
            return b""
        skip = offset - (start // 4) * 3
        return raw[skip : skip + size]


def _png(data: _DataUrlBytes) -> tuple[int, int] | None:
    head = data.read(0, 24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    return None


def _gif(data: _DataUrlBytes) -> tuple[int, int] | None:
    head = data.read(0, 10)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    return None


def _webp(data: _DataUrlBytes) -> tuple[int, int] | None:
    head = data.read(0, 30)
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return int(w) & 0x3FFF, int(h) & 0x3FFF
    return None


def _jpeg(data: _DataUrlBytes) -> tuple[int, int] | None:
    if data.read(0, 2) != b"\xff\xd8":
        return None
    pos = 2
    while pos < MAX_HEADER_BYTES:
        marker = data.read(pos, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(marker[2:4], "big")
        # start-of-frame markers carry the size (not DHT 0xC4, JPG 0xC8, DAC 0xCC)
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            frame = data.read(pos + 5, 4)
            if len(frame) < 4:
                return None
            h, w = struct.unpack(">HH", frame)
            return int(w), int(h)
        if length < 2:
            return None
        pos += 2 + length
    return None


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 image data URL, from its header bytes; None if
    it is not one or its header cannot be read."""
    if not url.startswith("data:"):
        return None
    meta, sep, payload = url.partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    data = _DataUrlBytes(payload)
    for reader in (_png, _jpeg, _gif, _webp):
        size = reader(data)
        if size is not None:
            return size
    return None


def image_part_tokens(part: dict[str, Any]) -> int:
    """Input tokens of one `image_url` content part, never raising on odd input."""
    image = part.get("image_url")
    url, detail = "", "auto"
    if isinstance(image, dict):
        found_url, found_detail = image.get("url"), image.get("detail")
        url = found_url if isinstance(found_url, str) else ""
        detail = found_detail if isinstance(found_detail, str) else "auto"
    elif isinstance(image, str):
        url = image
    if detail == "low":
        return LOW_DETAIL_TOKENS
    width, height = data_url_size(url) or UNKNOWN_SIZE
    return tile_tokens(width, height, "high")
