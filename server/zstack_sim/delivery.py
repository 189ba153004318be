"""Putting replies on the wire with aiohttp, including the misbehaving deliveries of fault rules.

Header policy (real MN, contract §3.1 [SRC/INF]): ZStack never sets a Content-Type, so Tomcat sends
none; it sends no ``Server`` header and (Tomcat 8.5+) no reason phrase on the status line [INF].
aiohttp adds ``Content-Type: application/octet-stream`` and ``Server`` by itself, so every response
built here carries a marker and :func:`strip_headers` (an ``on_response_prepare`` hook, which runs
after aiohttp filled in its defaults) removes what the reply did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from http import HTTPStatus
from typing import NoReturn

from aiohttp import web
from multidict import CIMultiDict

from zstack_sim.replies import Reply

__all__ = [
    "abort_connection",
    "hold",
    "make_response",
    "pause",
    "prepare_stream",
    "standard_reason",
    "strip_headers",
]


@dataclass(frozen=True, slots=True)
class _Strip:
    content_type: bool
    server: bool


_STRIP = web.ResponseKey("zstack_sim_strip", _Strip)
# How long an aborted handler waits for aiohttp to cancel it before giving up by itself.
_ABORT_GRACE = 5.0


def standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _headers(reply: Reply, content_type: str | None) -> tuple[CIMultiDict[str], _Strip]:
    # Framing stays consistent with the body actually sent: given Content-Length/Transfer-Encoding
    # values are dropped.
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in reply.headers if k.lower() not in ("content-length", "transfer-encoding")
    )
    if reply.kind == "json" and content_type and "Content-Type" not in headers:
        headers["Content-Type"] = content_type
    strip = _Strip(content_type="Content-Type" not in headers, server="Server" not in headers)
    return headers, strip


def make_response(reply: Reply, content_type: str | None) -> web.Response:
    """An aiohttp response for ``reply``; ``content_type`` applies to JSON replies only."""
    headers, strip = _headers(reply, content_type)
    response = web.Response(
        status=reply.status, reason=reply.reason if reply.reason is not None else "", body=reply.body
    )
    response.headers.extend(headers)
    response[_STRIP] = strip
    return response


async def prepare_stream(request: web.Request, reply: Reply, content_type: str | None) -> web.StreamResponse:
    """Send ``reply``'s status line and headers, with its full Content-Length, and no body yet."""
    headers, strip = _headers(reply, content_type)
    response = web.StreamResponse(
        status=reply.status, reason=reply.reason if reply.reason is not None else "", headers=headers
    )
    response.content_length = len(reply.body)
    response[_STRIP] = strip
    await response.prepare(request)
    return response


async def strip_headers(request: web.Request, response: web.StreamResponse) -> None:
    strip = response.get(_STRIP)
    if strip is None:
        return
    if strip.content_type:
        response.headers.popall("Content-Type", None)
    if strip.server:
        response.headers.popall("Server", None)


async def pause(seconds: float, stopping: asyncio.Event) -> bool:
    """Sleep; True when the simulator began stopping meanwhile (the caller should give up)."""
    if seconds <= 0:
        return stopping.is_set()
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def abort_connection(request: web.Request) -> NoReturn:
    """Close the connection with a TCP RST, then wait to be cancelled by aiohttp (which it does when
    it notices the lost connection)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    await asyncio.sleep(_ABORT_GRACE)
    raise ConnectionResetError("connection aborted by the simulator")


async def hold(request: web.Request, stopping: asyncio.Event) -> NoReturn:
    """Never answer: return only by cancellation (the client went away) or when the simulator stops."""
    await stopping.wait()
    await abort_connection(request)
