"""The gateway process: a grpc.aio server with the VM instance service, health and reflection,
and a graceful shutdown on SIGTERM/SIGINT.

Shutdown: the first signal turns every health status to NOT_SERVING, stops taking new calls and
lets in-flight calls finish for up to ``shutdown_grace`` seconds; a second signal ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from zstack.v1 import vm_instance_service_pb2 as svc

from zstack_gateway import auth, descriptors, interceptors, loops, tls, wire
from zstack_gateway.auth import callers
from zstack_gateway.budget import MemoryBudget
from zstack_gateway.coalesce import Coalescer
from zstack_gateway.readiness import Readiness
from zstack_gateway.retry import RetryPolicy
from zstack_gateway.servicer import IMAGE_SERVICE_NAME, VmInstanceServicer, add_to_server
from zstack_gateway.settings import Config, ConfigError, policy, split_host_port
from zstack_gateway.telemetry.metrics import Metrics
from zstack_gateway.telemetry.metrics import serve as serve_metrics
from zstack_gateway.upstream import ZStackClient

log = logging.getLogger("zstack_gateway")

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["VmInstanceService"].full_name
#: A health service name that says SERVING while the process runs, whatever ZStack does: for liveness
#: probes, which must not restart the gateway during a ZStack outage.
LIVENESS_NAME = "liveness"
MiB = 1024 * 1024
#: Seconds the server is given, once the drain is over, to send what it has queued before it stops.
FLUSH_GRACE = 0.2


@dataclass
class Gateway:
    """A started gateway: its server, its health servicer, the port it listens on."""

    config: Config
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    client: ZStackClient
    port: int
    servicer: VmInstanceServicer
    metrics: Metrics
    drain: interceptors.Drain
    readiness: Readiness | None = None
    metrics_runner: web.AppRunner | None = None
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME, IMAGE_SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first; new calls refused; in-flight calls get up to ``grace`` seconds
        (or until :meth:`hurry`) to finish; then the server stops, ending what is left (health
        watches never end by themselves), in one ``server.stop`` call."""
        if self.readiness is not None:
            await self.readiness.stop()
        await self.health.enter_graceful_shutdown()
        self.drain.draining = True
        grace = self.config.shutdown_grace if grace is None else grace
        idle = asyncio.ensure_future(self.drain.idle.wait())
        hurried = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({idle, hurried}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        hurried.cancel()
        # A moment for the last statuses to leave the transport before the connections close.
        await self.server.stop(0 if self._hurry.is_set() else FLUSH_GRACE)
        await self.client.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()

    def hurry(self) -> None:
        """Cut a running :meth:`stop`'s grace period short (a second SIGTERM)."""
        self._hurry.set()


def server_options(config: Config) -> list[tuple[str, int]]:
    """Channel arguments for callers, suited to running behind a service mesh or a proxy.

    Requests are small (a UUID and tags): 1 MiB is plenty, and 16 KiB of metadata. Responses go in
    chunks of about 1 MiB. Keepalive: the server pings an idle connection every ``keepalive_time``
    and accepts client pings every 10 s or more (a mesh sidecar pings too). ``max_connection_age``
    makes callers reconnect now and then, so a scaled-up deployment gets their load.
    """
    options = [
        ("grpc.max_receive_message_length", 1 * MiB),
        ("grpc.max_send_message_length", 16 * MiB),
        ("grpc.max_metadata_size", 16 * 1024),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Port sharing only between the gateway's own worker processes, never by accident.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
    ]
    if config.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.shutdown_grace * 1000) + 5000),
        ]
    return options


async def start(config: Config) -> Gateway:
    """Build and start the gateway for ``config`` (zstack_url must be set).

    A setting that cannot work only now (a port in use) raises ConfigError naming it; whatever was
    started before is stopped again, so a failed start leaves nothing open."""
    async with contextlib.AsyncExitStack() as undo:
        gateway = await _start(config, undo)
        undo.pop_all()  # started: from now on Gateway.stop undoes it
        return gateway
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the context manager may swallow)


async def _start(config: Config, undo: contextlib.AsyncExitStack) -> Gateway:
    zstack_tls = tls.zstack_ssl_context(config)
    budget = MemoryBudget(config.max_held_bytes)
    client = ZStackClient(
        config.zstack_url,
        auth.from_config(config, zstack_tls),
        max_body_bytes=config.max_body_bytes,
        pool_size=config.upstream_pool_size,
        retry=RetryPolicy(max_attempts=config.upstream_attempts),
        max_concurrent=config.max_upstream_calls,
        # Only pass-through calls carry identities of their own (one per ZStack session); in account
        # and AccessKey modes every call acts as the gateway's one identity, whose share would only
        # lower the total.
        max_per_identity=config.upstream_calls_per_identity if config.auth_mode == policy.PASSTHROUGH else 0,
        queue_timeout=config.upstream_queue_timeout,
        budget=budget,
    )
    await client.start(zstack_tls)
    undo.push_async_callback(client.close)
    metrics = Metrics()
    metrics.held_bytes.set_function(lambda: budget.held)
    metrics.upstream_in_flight.set_function(lambda: client.requests_in_flight)
    loop = loops.name(asyncio.get_running_loop())
    metrics.runtime.labels(translation=wire.PATH, loop=loop).set(1)
    drain = interceptors.Drain()
    server = grpc.aio.server(
        interceptors=interceptors.chain(drain, metrics, *callers.checks(config)),
        options=server_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    servicer = VmInstanceServicer(
        client,
        tz=config.tz,
        default_timeout=config.default_timeout,
        coalescer=Coalescer(enabled=config.coalesce),
    )
    add_to_server(servicer, server, idle_timeout=config.stream_idle_timeout)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            IMAGE_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
        pool=descriptors.reflection_pool(),  # the compiled-in descriptors with the protos' comments
    )
    try:
        port = tls.add_port(server, config)  # TLS or mutual TLS when configured
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise ConfigError(
            f"--listen {config.listen}: cannot listen there (the port is in use, or the address is not "
            "one of this machine's); choose another with --listen HOST:PORT (make run LISTEN=HOST:PORT)"
        )
    await server.start()
    undo.push_async_callback(server.stop, 0)
    # Said once the port is bound, so that a start-up failure stays one line.
    log.info("translation: %s path; event loop: %s", wire.PATH, loop)
    gateway = Gateway(config, server, health_servicer, client, port, servicer, metrics, drain)
    await health_servicer.set(LIVENESS_NAME, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_listen:
        host, metrics_port = split_host_port(config.metrics_listen)
        try:
            gateway.metrics_runner = await serve_metrics(metrics, host, metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-listen {config.metrics_listen}: cannot listen there "
                f"({exc.strerror or type(exc).__name__}); choose another HOST:PORT"
            ) from None
    if config.readiness_interval > 0:
        gateway.readiness = Readiness(
            client, gateway.set_serving, interval=config.readiness_interval, metrics=metrics
        )
        await gateway.readiness.start()
    else:
        await gateway.set_serving(True)
    return gateway


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    gateway = await start(config)
    try:
        yield gateway
    finally:
        await gateway.stop()


class ShutdownSignals:
    """SIGTERM and SIGINT as a stop request; a second one cuts the grace period short.

    Installed before anything starts (:meth:`install`), a signal during start-up (a Ctrl-C right
    after ``make run``) is a stop request like any other, carried out once the gateway is up,
    instead of a KeyboardInterrupt that leaves the server and its ZStack client open."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, grace: float) -> None:
        self.requested = asyncio.Event()
        self._grace = grace
        self._seen = 0
        self._gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        for signum in self._SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)

    def remove(self) -> None:
        if self._loop is not None:
            for signum in self._SIGNALS:
                self._loop.remove_signal_handler(signum)
            self._loop = None

    def attach(self, gateway: Gateway) -> None:
        """The gateway a second signal hurries (at once, if it came already)."""
        self._gateway = gateway
        if self._seen > 1:
            gateway.hurry()

    def _on_signal(self, signum: int) -> None:
        self._seen += 1
        if self._seen == 1:
            name = signal.Signals(signum).name
            log.info("%s received: shutting down (grace %.1f s)", name, self._grace)
            self.requested.set()
        else:
            log.warning("second signal: stopping now")
            if self._gateway is not None:
                self._gateway.hurry()


async def serve_until_signal(gateway: Gateway, signals: ShutdownSignals | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; a second signal cuts the grace.
    ``signals``: handlers installed earlier (they stay installed); by default its own."""
    own = signals is None
    if signals is None:
        signals = ShutdownSignals(gateway.config.shutdown_grace)
        signals.install()
    signals.attach(gateway)
    try:
        await signals.requested.wait()
        await gateway.stop()
    finally:
        if own:
            signals.remove()
