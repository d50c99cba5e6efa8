"""Stopping a process's background tasks (key-table poller, usage writer, trim).

Each owner cancels its task on the way out and waits for it to finish, so that
nothing it was doing is left half done when the loop closes.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
