"""Real servers for tests: gateways on one shared event loop in a thread, on loopback ports."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

import grpc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config, Gateway
from zstack_gateway import app as gateway_app


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
        self.call(self.gateway.stop(grace))

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stub(self, channel: grpc.Channel) -> svc_grpc.VmInstanceServiceStub:
        return svc_grpc.VmInstanceServiceStub(channel)


class SimControl:
    """The simulator's HTTP control plane (/_sim/...), as a test drives it."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def reset(self) -> None:
        self._call("POST", "/_sim/reset", {})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_sim/requests")
        return result

    def zstack_requests(self) -> list[dict[str, Any]]:
        """Requests to ZStack's API made on behalf of callers (the gateway's background readiness
        checks of /zstack/v1/management-nodes/ready left out)."""
        return [
            r
            for r in self.requests()
            if r["path"].startswith("/zstack/") and r["path"] != "/zstack/v1/management-nodes/ready"
        ]

    def fault(self, **rule: object) -> None:
        self._call("POST", "/_sim/faults", rule)

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_sim/stats")
        return result

    def expire_session(self, uuid: str) -> None:
        self._call("POST", f"/_sim/sessions/{uuid}/expire", {})

    def config(self, **settings: object) -> None:
        """Change the simulator's settings, e.g. ``latency_ms``."""
        self._call("POST", "/_sim/config", settings)

    def set_ready(self, ready: bool) -> None:
        self._call("POST", "/_sim/ready", {"ready": ready})
