"""Image input tokens for local counts: OpenAI's tile formula, and image sizes
read from the first bytes of data URLs (Pillow makes the images)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from proxy.metering.images import data_url_size, image_part_tokens, tile_tokens


@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        (512, 512, "low", 85),  # low detail: a flat 85, whatever the size
        (4096, 4096, "low", 85),
        (1024, 1024, "high", 765),  # -> 768 x 768: 4 tiles
        (2048, 4096, "high", 1105),  # -> 1024 x 2048 -> 768 x 1536: 6 tiles
        (512, 512, "high", 255),  # 1 tile, never scaled up
        (100, 3000, "high", 765),  # -> 68 x 2048: 1 x 4 tiles
    ],
)
def test_the_published_tile_formula(width: int, height: int, detail: str, tokens: int) -> None:
    assert tile_tokens(width, height, detail) == tokens


def _data_url(fmt: str, size: tuple[int, int], **save: object) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, format=fmt, **save)
    mime = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(1024, 1024), (2048, 4096), (37, 5)])
def test_sizes_come_from_the_header_bytes(fmt: str, size: tuple[int, int]) -> None:
    assert data_url_size(_data_url(fmt, size)) == size


def test_a_lossless_webp_and_a_progressive_jpeg_with_exif_are_read() -> None:
    assert data_url_size(_data_url("WEBP", (300, 200), lossless=True)) == (300, 200)
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # a large APP1 segment before the frame header
    url = _data_url("JPEG", (640, 480), progressive=True, exif=exif.tobytes())
    assert data_url_size(url) == (640, 480)


def test_only_the_header_is_decoded() -> None:
    url = _data_url("PNG", (1024, 1024))
    # a body that is not valid base64 past its header does not matter
    broken = url[:200] + "!!!!" * 1000
    assert data_url_size(broken) == (1024, 1024)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url"},
        {"type": "image_url", "image_url": 5},
        {"type": "image_url", "image_url": {"url": 5, "detail": ["x"]}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}},
        {"type": "image_url", "image_url": {"url": "data:,plain"}},
    ],
)
def test_odd_parts_never_raise(part: dict[str, object]) -> None:
    assert image_part_tokens(part) > 0


def test_remote_urls_are_counted_without_fetching() -> None:
    part = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}
    assert image_part_tokens(part) == tile_tokens(1024, 1024)
    low = {"type": "image_url", "image_url": {"url": "https://example.invalid/x", "detail": "low"}}
    assert image_part_tokens(low) == 85
