"""The two ways a Python caller gets a VM's ISO candidates, timed the same way, and load shapes.

* direct: ``requests.Session()`` at its defaults, ``GET .../iso-candidates``, then ``.json()``, as a
  user who skips the gateway would write it;
* gateway: the generated stub over a plain ``grpc.insecure_channel``, reading the whole stream.

Both use the demo session and the demo VM (the generated data sets use the same VM uuid), and both
carry a generous timeout so that a stuck server cannot hang the harness.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import requests
import zstack_sim
from procs import HarnessError
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc

AUTHORIZATION = f"OAuth {zstack_sim.DEMO_SESSION_UUID}"
CALL_TIMEOUT_S = 60.0
REQUEST = svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID)
METADATA = (("authorization", AUTHORIZATION),)


@dataclass(frozen=True)
class Timing:
    """One call: seconds to the end, seconds to the first image (the stream only), images, bytes."""

    total: float
    first_image: float | None
    images: int
    body_bytes: int = 0


class Caller(Protocol):
    def call(self) -> Timing: ...

    def close(self) -> None: ...


class DirectCaller:
    """A user calling ZStack's REST API with requests, session at its default settings."""

    def __init__(self, zstack_url: str) -> None:
        self.url = f"{zstack_url}/zstack/v1/vm-instances/{zstack_sim.DEMO_VM_UUID}/iso-candidates"
        self.session = requests.Session()
        self.headers = {"Authorization": AUTHORIZATION}

    def call(self) -> Timing:
        started = time.perf_counter()
        response = self.session.get(self.url, headers=self.headers, timeout=CALL_TIMEOUT_S)
        body = response.json()
        total = time.perf_counter() - started
        if response.status_code != 200:
            raise HarnessError(f"direct call answered {response.status_code}: {response.text[:200]}")
        return Timing(total, None, len(body["inventories"]), len(response.content))

    def close(self) -> None:
        self.session.close()


class GatewayCaller:
    """A user calling the gateway with the generated stub over a plain channel.

    ``own_connection`` gives the channel a local subchannel pool: grpc otherwise shares one
    connection between channels to the same target, and independent callers do not share one.
    """

    def __init__(self, target: str, *, own_connection: bool = False) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = svc_grpc.VmInstanceServiceStub(self.channel)

    def call(self) -> Timing:
        started = time.perf_counter()
        first: float | None = None
        images = 0
        try:
            for message in self.stub.GetCandidateIso(REQUEST, metadata=METADATA, timeout=CALL_TIMEOUT_S):
                if first is None and message.inventories:
                    first = time.perf_counter() - started
                images += len(message.inventories)
        except grpc.RpcError as exc:
            raise HarnessError(f"gateway call failed: {exc.code()} {exc.details()}") from None
        return Timing(time.perf_counter() - started, first, images)

    def close(self) -> None:
        self.channel.close()


def timed_block(caller: Caller, calls: int, expect_images: int) -> list[Timing]:
    """``calls`` sequential calls; each must return every image."""
    timings = [caller.call() for _ in range(calls)]
    for timing in timings:
        if timing.images != expect_images:
            raise HarnessError(f"a call returned {timing.images} images, expected {expect_images}")
    return timings


# --- P4: many independent callers released together ---------------------------------------------


def burst(callers: Sequence[Caller], before_release: Callable[[], None]) -> list[Timing]:
    """Every caller on its own thread, released together by a barrier; ``before_release`` runs
    while they all wait. Each caller's latency runs from its own release to its last byte."""
    barrier = threading.Barrier(len(callers) + 1)
    results: list[Timing | BaseException | None] = [None] * len(callers)

    def run(index: int, caller: Caller) -> None:
        try:
            barrier.wait(timeout=CALL_TIMEOUT_S)
            results[index] = caller.call()
        except BaseException as exc:
            results[index] = exc

    threads = [
        threading.Thread(target=run, args=(i, c), name=f"caller-{i}", daemon=True)
        for i, c in enumerate(callers)
    ]
    for thread in threads:
        thread.start()
    try:
        before_release()
    finally:
        barrier.wait(timeout=CALL_TIMEOUT_S)
    deadline = time.monotonic() + CALL_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    timings: list[Timing] = []
    for result in results:
        if not isinstance(result, Timing):
            raise HarnessError(f"a concurrent caller failed: {result!r}")
        timings.append(result)
    return timings


# --- P5: throughput at a fixed concurrency --------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    calls: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds


async def _drive(target: str, concurrency: int, duration: float, warmup_calls: int) -> Throughput:
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = svc_grpc.VmInstanceServiceStub(channel)

        async def one_call() -> None:
            async for _ in stub.GetCandidateIso(REQUEST, metadata=METADATA, timeout=CALL_TIMEOUT_S):
                pass

        for _ in range(warmup_calls):
            await one_call()
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop_at = started + duration
        done = 0

        async def worker() -> None:
            nonlocal done
            while loop.time() < stop_at:
                await one_call()
                done += 1

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        except grpc.RpcError as exc:
            raise HarnessError(f"load call to {target} failed: {exc}") from None
        return Throughput(done, loop.time() - started)


def throughput(target: str, concurrency: int, duration: float, warmup_calls: int = 50) -> Throughput:
    """Calls per second from one grpc.aio channel with ``concurrency`` callers looping for
    ``duration`` seconds (calls already started are finished and counted)."""
    return asyncio.run(_drive(target, concurrency, duration, warmup_calls))
