"""Which asyncio event loop the gateway runs on: uvloop where it is installed (the ``fast`` extra),
else asyncio's own. ``ZSTACK_GATEWAY_LOOP=asyncio`` in the environment forces asyncio's loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    if os.environ.get("ZSTACK_GATEWAY_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what runs ``loop``."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
