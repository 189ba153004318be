"""Writes a streaming RPC's messages to the caller, one at a time, as the caller reads them.

grpc's writes wait under HTTP/2 flow control, so a stream is built no faster than its caller reads
it. A write that makes no progress for the idle timeout (the caller reads nothing) ends the call
with RESOURCE_EXHAUSTED ``STREAM_IDLE_TIMEOUT``, which frees what the call held. A write fails only
when the call is over (the caller went away, or the server stops): the call then leaves as a
cancelled one, with no status of its own. Each message's images are counted on the call's record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from zstack_gateway import errors
from zstack_gateway.telemetry import calls


async def write_all(context: Any, messages: AsyncIterator[Any], idle_timeout: float) -> None:
    """Write every message of ``messages`` (closing it however the call ends)."""
    record = calls.current.get()
    try:
        async for message in messages:
            if record is not None:
                images = getattr(message, "images", None)
                record.images += images if images is not None else len(getattr(message, "inventories", ()))
                if record.metadata_out is not None:
                    await calls.initial_metadata_out(record)
            await write(context, message, idle_timeout)
    finally:
        await messages.aclose()  # type: ignore[attr-defined]


async def write(context: Any, message: Any, idle_timeout: float) -> None:
    """Write one message; a caller that reads nothing for ``idle_timeout`` seconds (0: no limit)
    ends the call."""
    try:
        if idle_timeout <= 0:
            await context.write(message)
            return
        try:
            # No task per write: on time-out the wait for grpc's write is cancelled, as when the
            # caller goes away (grpc leaves a cancelled wait alone); the message stays queued in
            # grpc, and the status that ends the call follows it.
            async with asyncio.timeout(idle_timeout):
                await context.write(message)
        except TimeoutError:
            raise errors.stream_idle(idle_timeout) from None
    except (errors.GatewayError, asyncio.CancelledError):
        raise
    except Exception:  # grpc's ExecuteBatchError, UsageError ("RPC already finished"), ...
        raise asyncio.CancelledError from None


def streaming(
    method: Callable[[Any, Any], AsyncIterator[Any]], idle_timeout: float
) -> Callable[[Any, Any], Any]:
    """A unary-stream handler (a coroutine) that writes the messages of ``method``, an async
    generator servicer method."""

    async def serve(request: Any, context: Any) -> None:
        await write_all(context, method(request, context), idle_timeout)

    return serve
