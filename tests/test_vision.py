"""prometheus-vision: image parts pass through untouched, and the gateway never
fetches a client's image URL.

The session gateway's prometheus-lite goes to the fake OpenAI upstream, which
records the bytes it received; prometheus-vision keeps its default (the
simulator). A `FaultyUpstream` stands in for a web server holding the image,
recording every GET it gets.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from faulty_upstream import FaultyUpstream
from PIL import Image
from upstream_app import Upstream


def _png_data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _vision_message(url: str, detail: str = "high") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


@pytest.fixture(scope="module")
def image_host() -> Iterator[FaultyUpstream]:
    host = FaultyUpstream()
    host.start()
    yield host
    host.stop()


def test_data_url_images_reach_the_upstream_byte_for_byte(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    url = _png_data_url((640, 480))
    upstream.clear()
    client.chat.completions.create(model="prometheus-lite", messages=_vision_message(url))
    sent = upstream.received("/chat/completions")[-1]
    part = sent["body"]["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    assert orjson.dumps(url) in sent["raw"]


@pytest.mark.parametrize("alias", ["prometheus-lite", "prometheus-vision"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_remote_image_url_is_never_fetched_by_the_gateway(
    client: openai.OpenAI, image_host: FaultyUpstream, alias: str, stream: bool
) -> None:
    url = f"http://127.0.0.1:{image_host.port}/cat-{alias}-{stream}.png"
    reply = client.chat.completions.create(
        model=alias, messages=_vision_message(url, "low"), stream=stream
    )
    if stream:
        assert list(reply)
    assert [p for p, m in image_host.seen if m == "GET"] == []
