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
from typing import Any

import openai
import orjson
import pytest
from faulty_upstream import FaultyUpstream
from gateway_process import GatewayProcess
from PIL import Image
from upstream_app import Upstream
from waiting import wait_for

from proxy.metering.images import tile_tokens
from proxy.metering.tokens import count_chat_input


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
    client: openai.OpenAI, faulty: FaultyUpstream, alias: str, stream: bool
) -> None:
    url = f"http://127.0.0.1:{faulty.port}/cat-{alias}-{stream}.png"
    reply = client.chat.completions.create(
        model=alias, messages=_vision_message(url, "low"), stream=stream
    )
    if stream:
        assert list(reply)
    assert [p for p, m in faulty.seen if m == "GET"] == []  # a stand-in image host


def test_a_dropped_vision_stream_bills_the_image_by_the_tile_formula(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    key = gateway.create_key("vision-drop")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    image = _vision_message(_png_data_url((1024, 1024)), "high")[0]
    # the upstream reads its magic word from the last user message's text
    messages = [image, {"role": "user", "content": "__hold_after_3__ and then?"}]
    received = ""
    with client.chat.completions.create(
        model="prometheus-lite", stream=True, messages=messages
    ) as stream:
        for chunk in stream:
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if received.count(" ") >= 2:  # three words in: leave
                break
    rows = wait_for(
        lambda: gateway.db_rows(
            "SELECT status, input_tokens, usage_source FROM requests WHERE key_id = ?", key["id"]
        ),
        message="the dropped stream's record",
    )
    [(status, input_tokens, source)] = rows
    assert (status, source) == (499, "local")
    body = {"messages": messages}
    without_image = {"messages": [{"role": "user", "content": [image["content"][0]]}, messages[1]]}
    assert input_tokens == count_chat_input(body)
    assert count_chat_input(body) - count_chat_input(without_image) == tile_tokens(1024, 1024)
    assert tile_tokens(1024, 1024) == 765
