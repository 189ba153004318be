"""Running the simulator: :class:`Simulator` on the caller's event loop, or :func:`run_in_thread`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from datetime import tzinfo
from types import TracebackType
from typing import Any

from aiohttp import web

from zstack_sim.app import build_app
from zstack_sim.data import SimData
from zstack_sim.demo import demo_data
from zstack_sim.state import SimConfig, SimState
from zstack_sim.zones import resolve_tz

__all__ = ["Simulator", "ThreadedSimulator", "run_in_thread"]

# Stop must be quick even with requests left hanging: they are aborted first, then aiohttp gets this
# long to finish the rest.
_SHUTDOWN_TIMEOUT = 1.0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Simulator:
    """A simulated ZStack management node serving real HTTP.

    ``data`` defaults to :func:`demo_data`. ``tz`` is the MN's time zone for Gson dates and AccessKey
    ``Date`` checks. ``content_type`` (default none, like the real MN) is sent on JSON bodies.
    ``ssl_context`` serves HTTPS (a server-side context holding the certificate) instead of HTTP.
    """

    def __init__(
        self,
        data: SimData | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tz: str | tzinfo = "Asia/Shanghai",
        session_timeout: float = 7200.0,
        content_type: str | None = None,
        latency_ms: float = 0.0,
        max_sessions: int = 500,
        check_time_zone: bool = False,
        log_limit: int = 10000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        config = SimConfig(
            latency_ms=latency_ms,
            session_timeout=session_timeout,
            max_sessions=max_sessions,
            content_type=content_type,
            check_time_zone=check_time_zone,
        )
        self.state = SimState(
            data if data is not None else demo_data(), config, resolve_tz(tz), log_limit=log_limit
        )
        self.host = host
        self._ssl_context = ssl_context
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123`` (append ``/zstack/v1/...``)."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            build_app(self.state, self._stopping),
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self._requested_port, backlog=1024, ssl_context=self._ssl_context
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses  # the bound port when port=0
        self._port = int(addresses[0][1]) if addresses else self._requested_port

    async def stop(self) -> None:
        """Stop serving; requests left hanging by faults are aborted."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        await asyncio.sleep(0)
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class ThreadedSimulator:
    """A :class:`Simulator` on its own event loop in a daemon thread (see :func:`run_in_thread`)."""

    def __init__(self, data: SimData | None = None, **kwargs: Any) -> None:
        self.simulator = Simulator(data, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zstack-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the simulator thread did not start in time")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.simulator.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.simulator.stop()

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def port(self) -> int:
        return self.simulator.port

    def close(self, timeout: float = 10.0) -> None:
        """Stop the simulator and wait for its thread (idempotent)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ThreadedSimulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def run_in_thread(data: SimData | None = None, **kwargs: Any) -> ThreadedSimulator:
    """Start a simulator in a daemon thread; returns once it listens. Keyword arguments are
    :class:`Simulator`'s (``host``, ``port``, ``tz``, ``session_timeout``, ``content_type``, ...).

    Use as a context manager or call ``.close()``; ``.url`` and ``.port`` say where it listens.
    """
    return ThreadedSimulator(data, **kwargs)
