"""Prometheus metrics of one gateway, in a registry of its own, served on ``--metrics-listen``.

Label values are bounded: methods are the service's own, gRPC codes a fixed set, HTTP statuses
three digits, ZStack codes only those the gateway knows (anything else counts as ``other``). No UUID,
tag or session ever becomes a label.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from zstack_gateway.errors import ZSTACK_CODES

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_KNOWN_ZSTACK_CODES = frozenset(ZSTACK_CODES) | {"SYS.1006", "SYS.1008", "SYS.1017", "ID.1005", "PORTAL.1000"}


def zstack_code_label(code: str | None) -> str:
    if not code:
        return "none"
    return code if code in _KNOWN_ZSTACK_CODES else "other"


def http_status_label(status: int | None) -> str:
    return str(status) if status is not None and 100 <= status <= 599 else "none"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._upstream_children: dict[tuple[str, int | None, str | None], tuple[Any, Any]] = {}
        self.rpcs = Counter(
            "zstack_gateway_rpcs", "RPCs finished, by method and gRPC code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "zstack_gateway_rpc_duration_seconds",
            "RPC duration, from the call's start to its status",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpcs_in_flight = Gauge("zstack_gateway_rpcs_in_flight", "RPCs being served", registry=r)
        self.upstream_seconds = Histogram(
            "zstack_gateway_upstream_duration_seconds",
            "Duration of one HTTP request to ZStack, by API",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_responses = Counter(
            "zstack_gateway_upstream_responses",
            "HTTP requests to ZStack by API, HTTP status ('none' when no answer came) and ZStack error code",
            ["api", "http_status", "zstack_code"],
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "zstack_gateway_upstream_in_flight", "HTTP requests to ZStack in flight", registry=r
        )
        self.coalesced = Counter(
            "zstack_gateway_coalesced_calls", "Calls answered by another call's upstream request", registry=r
        )
        self.images = Counter("zstack_gateway_images_streamed", "ISO images streamed to callers", registry=r)
        self.held_bytes = Gauge(
            "zstack_gateway_held_bytes",
            "Bytes of ZStack answers, and of the stream messages built from them, held for callers "
            "(bounded by --max-held-bytes)",
            registry=r,
        )
        self.zstack_ready = Gauge(
            "zstack_gateway_zstack_ready", "1 while ZStack answers its readiness check, else 0", registry=r
        )
        self.runtime = Gauge(
            "zstack_gateway_runtime",
            "1 for how this process runs: translation (compiled or pure) and event loop (asyncio or uvloop)",
            ["translation", "loop"],
            registry=r,
        )

    def rpc_children(self, method: str, code: str) -> tuple[Any, Any]:
        """The ``rpcs`` counter and ``rpc_seconds`` histogram of one full method name (the part after
        the last "/" is the label) and code, looked up once and then kept."""
        key = (method, code)
        children = self._rpc_children.get(key)
        if children is None:
            label = method.rsplit("/", 1)[-1]
            children = (self.rpcs.labels(label, code), self.rpc_seconds.labels(label))
            if len(self._rpc_children) >= 1024:  # methods are a handful; codes are 17
                self._rpc_children.clear()
            self._rpc_children[key] = children
        return children

    def upstream_children(self, api: str, status: int | None, zstack_code: str | None) -> tuple[Any, Any]:
        """The ``upstream_seconds`` histogram and ``upstream_responses`` counter of one request's API
        label, HTTP status and ZStack code, looked up once and then kept. The code comes from ZStack
        and may be anything: at most 1,024 keys are kept (the labels themselves are bounded)."""
        key = (api, status, zstack_code)
        children = self._upstream_children.get(key)
        if children is None:
            children = (
                self.upstream_seconds.labels(api),
                self.upstream_responses.labels(
                    api, http_status_label(status), zstack_code_label(zstack_code)
                ),
            )
            if len(self._upstream_children) >= 1024:
                self._upstream_children.clear()
            self._upstream_children[key] = children
        return children

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` on HOST:PORT; stop it with ``await runner.cleanup()``."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
