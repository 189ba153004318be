"""asyncio helpers shared by the gateway's modules."""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve(task: asyncio.Future[Any]) -> None:
    """A done callback that retrieves a finished task's outcome, so that a task whose outcome nobody
    waits for any more (an abandoned write, a status on its way, a login) is not reported."""
    if not task.cancelled():
        task.exception()
