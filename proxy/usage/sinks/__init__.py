"""Where the sidecar (`proxy.usage.ship`) sends usage rows: a `Sink` takes one
batch and returns only once the far side has it for good (a PostgreSQL
commit, an HTTP 2xx), else raises `SinkError`. Every row carries a stable `id`
(node id + request id), so a batch sent twice is counted once.
"""

from __future__ import annotations

from typing import Any, Protocol

Row = dict[str, Any]


class SinkError(Exception):
    """The batch may not have arrived: it is sent again later."""


class Sink(Protocol):
    name: str

    async def ready(self) -> None:
        """Connect (and migrate) now, not at the first row; raises SinkError."""

    async def send(self, rows: list[Row]) -> None: ...

    async def close(self) -> None: ...
