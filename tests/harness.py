"""Real servers for tests: gateways on one shared event loop in a thread, on loopback ports; the
credentials settings of the demo account; what counts as a gateway traceback in a log."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import grpc
import zstack_sim
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config, Gateway
from zstack_gateway import app as gateway_app
from zstack_gateway.settings import Secret


def has_traceback(record: logging.LogRecord) -> bool:
    """A record of the gateway's, grpc's or asyncio's loggers that carries a traceback: an exception
    the gateway did not expect (the simulator's and the test's own loggers are not the gateway's)."""
    return record.name.startswith(("zstack_gateway", "grpc", "asyncio")) and bool(
        record.exc_info or "Traceback" in record.getMessage()
    )


class _SharedLoop:
    """One event loop in one thread for every gateway a test process starts.

    grpc.aio keeps per-process state tied to the event loop it first runs on; servers started and
    stopped on several loops in several threads have crashed the interpreter inside grpc's shutdown.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="gateways", daemon=True).start()
                cls._loop = loop
            return cls._loop


class GatewayThread:
    """A gateway started with ``config`` on the tests' shared gateway event loop, for synchronous tests."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loop = _SharedLoop.get()
        self.gateway: Gateway = self.call(gateway_app.start(config))
        self.port = self.gateway.port
        self.target = f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper())

    def stop(self, grace: float = 0) -> None:
        if "_stub_channel" in self.__dict__:
            self._stub_channel.close()
        self.call(self.gateway.stop(grace))

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    @functools.cached_property
    def _stub_channel(self) -> grpc.Channel:
        return self.channel()

    @functools.cached_property
    def stub(self) -> svc_grpc.VmInstanceServiceStub:
        """A stub on a channel of this gateway's own, opened on first use and closed by stop()."""
        return svc_grpc.VmInstanceServiceStub(self._stub_channel)


class Gateways:
    """Starts gateways with ``Config`` settings (each call's keyword arguments over ``defaults``) and
    stops every one it started when the ``with`` block ends. The defaults: a free loopback port, no
    background readiness checks (the tests count ZStack requests) and a 5 s budget for a call
    without a deadline."""

    def __init__(self, zstack_url: str, **defaults: Any) -> None:
        self.defaults: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "zstack_url": zstack_url,
            "readiness_interval": 0.0,
            "default_timeout": 5.0,
            **defaults,
        }
        self.started: list[GatewayThread] = []

    def __call__(self, **overrides: Any) -> GatewayThread:
        gw = GatewayThread(Config(**{**self.defaults, **overrides}).check())
        self.started.append(gw)
        return gw

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for gw in self.started:
            gw.stop()


def account(**overrides: Any) -> dict[str, Any]:
    """Config settings of account mode with the demo account."""
    return {
        "auth_mode": "account",
        "zstack_account": zstack_sim.DEMO_ACCOUNT_NAME,
        "zstack_password": Secret(zstack_sim.DEMO_ACCOUNT_PASSWORD),
        **overrides,
    }


def access_key(**overrides: Any) -> dict[str, Any]:
    """Config settings of AccessKey mode with the demo access key."""
    return {
        "auth_mode": "access-key",
        "zstack_access_key_id": zstack_sim.DEMO_ACCESS_KEY_ID,
        "zstack_access_key_secret": Secret(zstack_sim.DEMO_ACCESS_KEY_SECRET),
        **overrides,
    }
