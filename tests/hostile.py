"""Hostile ZStacks for tests, on 127.0.0.1.

:class:`HostileUpstream` is an aiohttp server, in a thread of its own with its own event loop, that
stands in front of the simulator.

Every request is logged here (``log``) and forwarded to the simulator, so the simulator's request
log sees it too; a rule whose regex matches the request's path then replaces the simulator's answer
with raw bytes (whatever their encoding), or closes the connection, or holds it. Requests that no
rule matches get the simulator's answer unchanged. Rules marked ``forward=False`` answer without
asking the simulator (a login that must not create a session, a peer that does not answer).

:class:`RawListener` is a bare TCP listener, for peers that speak HTTP byte by byte (or not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web

RESET = "reset"  # close the connection with a TCP RST, without a status line
HANG = "hang"  # never answer


@dataclass
class Rule:
    path: re.Pattern[str]
    status: int = 503
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str | None = None  # RESET or HANG instead of an answer
    forward: bool = True
    delay: float = 0.0  # seconds to wait before answering


class HostileUpstream:
    def __init__(self, sim_url: str) -> None:
        self.sim_url = sim_url.rstrip("/")
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str]] = []  # (method, path) of every request, oldest first
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="hostile-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    # --- driving it from a test ----------------------------------------------------------------

    def answer(self, path: str, status: int = 503, body: bytes = b"", **kw: Any) -> None:
        """Answer requests whose path matches the regex ``path`` this way (first rule added wins)."""
        with self._lock:
            self.rules.append(Rule(re.compile(path), status, body, **kw))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests(self, path: str) -> int:
        """How many requests whose path matches the regex ``path`` came here."""
        pattern = re.compile(path)
        with self._lock:
            return sum(1 for _, p in self.log if pattern.search(p))

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the server ----------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._client = aiohttp.ClientSession(auto_decompress=False)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._client.close()
            await runner.cleanup()

    def _rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.log.append((method, path))
            for rule in self.rules:
                if rule.path.search(path):
                    return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        rule = self._rule(request.method, path)
        body = await request.read()
        forwarded: tuple[int, bytes, dict[str, str]] | None = None
        if rule is None or rule.forward:
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
            }
            async with self._client.request(
                request.method, self.sim_url + request.raw_path, headers=headers, data=body
            ) as resp:
                forwarded = (resp.status, await resp.read(), dict(resp.headers))
        if rule is None:
            assert forwarded is not None
            status, data, headers = forwarded
            keep = {k: v for k, v in headers.items() if k.lower() == "content-type"}
            return web.Response(status=status, body=data, headers=keep)
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.action == HANG:
            assert self._stop is not None
            await self._stop.wait()
        if rule.action in (HANG, RESET):
            _abort(request)
            await asyncio.sleep(1)
            raise ConnectionResetError("reset by the hostile upstream")
        return web.Response(status=rule.status, body=rule.body, headers=rule.headers)


class RawListener:
    """A TCP listener on 127.0.0.1 (``port``, ``url``) whose accept loop runs in a thread of its own
    and hands every connection to :meth:`handle`, on that thread."""

    def __init__(self, backlog: int = 64) -> None:
        self.port = 0
        self._backlog = backlog
        self.listen()
        self.url = f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        """Listen (again, on the same port after :meth:`stop_listening`)."""
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(self._backlog)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="raw-listener", daemon=True)
        self._thread.start()

    def stop_listening(self) -> None:
        """Close the listening socket: connections to the port are refused until :meth:`listen`."""
        self._stop.set()
        self._sock.close()
        self._thread.join(5)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.handle(conn)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
