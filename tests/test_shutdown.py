"""Graceful shutdown of the real ``zstack-gateway`` process (README "Shutdown").

SIGTERM turns health to NOT_SERVING, stops taking calls, lets in-flight calls finish within
``--shutdown-grace`` and exits 0; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
import zstack_sim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import Proc, wait_until

C = grpc.StatusCode
AUTH = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)
STREAMS = 50
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def simulator() -> Iterator[zstack_sim.ThreadedSimulator]:
    """This module's own simulator: its tests slow it down and count its requests in flight."""
    with zstack_sim.run_in_thread(zstack_sim.demo_data()) as sim:
        yield sim


class HealthWatch:
    """A Health/Watch stream read in a thread: (monotonic time, status) of every update. With
    ``leave_on_not_serving`` the watcher hangs up once it sees NOT_SERVING (a load balancer that
    drops the backend); without it, it stays until the server ends the stream (grpc's client-side
    health checking keeps one such stream per connection)."""

    def __init__(self, channel: grpc.Channel, *, leave_on_not_serving: bool) -> None:
        self.updates: list[tuple[float, int]] = []
        self._leave = leave_on_not_serving
        self._call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.updates.append((time.monotonic(), response.status))
                if self._leave and response.status == NOT_SERVING:
                    self._call.cancel()
        except grpc.RpcError:
            pass  # the stream ended: cancelled by the watcher, or by the server going away

    def first(self, status: int) -> float | None:
        return next((t for t, s in self.updates if s == status), None)

    def cancel(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def stream_once(stub, index: int, timeout: float) -> tuple[float, grpc.StatusCode, int]:
    """One GetCandidateIso; distinct tags so that calls are not coalesced into one upstream request."""
    request = svc.GetCandidateIsoRequest(
        vm_instance_uuid=zstack_sim.DEMO_VM_UUID, user_tags=[f"stream-{index}"]
    )
    images = 0
    try:
        for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=timeout):
            images += len(chunk.inventories)
    except grpc.RpcError as err:
        return time.monotonic(), err.code(), images
    return time.monotonic(), C.OK, images


def drain_with_sigterm(gateway_process, sim: SimControl, grace: float, *, leave_on_not_serving: bool):
    """A gateway with ``--shutdown-grace grace``, 50 streams in flight (1 s upstream latency each),
    then SIGTERM. Returns the gateway, the stream results, the late caller's code, the health
    updates, the exit code and the times of the signal and of the exit."""
    sim.config(latency_ms=1000)
    gw = gateway_process(
        "--shutdown-grace",
        str(grace),
        "--max-upstream-calls",
        str(STREAMS + 14),
        # one session sends every stream: no per-session share
        "--max-upstream-calls-per-identity",
        str(STREAMS + 14),
    )
    with grpc.insecure_channel(gw.address) as channel, ThreadPoolExecutor(STREAMS) as pool:
        watch = HealthWatch(channel, leave_on_not_serving=leave_on_not_serving)
        assert wait_until(lambda: watch.first(SERVING) is not None, timeout=5), watch.updates
        stub = svc_grpc.VmInstanceServiceStub(channel)
        futures = [pool.submit(stream_once, stub, i, 30.0) for i in range(STREAMS)]
        # Every stream has its upstream request waiting in the simulator's latency.
        assert wait_until(lambda: sim.stats()["in_flight"] >= STREAMS, timeout=5), sim.stats()
        sent = time.monotonic()
        gw.signal(signal.SIGTERM)

        # A new caller is turned away while the others drain.
        assert wait_until(lambda: watch.first(NOT_SERVING) is not None, timeout=2), watch.updates
        with grpc.insecure_channel(gw.address) as late:
            _, late_code, _ = stream_once(svc_grpc.VmInstanceServiceStub(late), STREAMS, 2.0)

        results = [f.result(timeout=grace + 5) for f in futures]
        rc = gw.wait(timeout=grace + 5)
        exited = time.monotonic()
        watch.cancel()
    return gw, results, late_code, watch, rc, sent, exited


@contextlib.contextmanager
def hung_streams(gateway_process, sim: SimControl, grace: float) -> Iterator[tuple[Proc, list[Future]]]:
    """A gateway with ``--shutdown-grace grace`` and five streams in flight whose upstream requests
    hang: the gateway and the streams' futures (stream_once's results)."""
    sim.fault(action="hang")
    gw = gateway_process("--shutdown-grace", str(grace))
    with grpc.insecure_channel(gw.address) as channel, ThreadPoolExecutor(5) as pool:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        futures = [pool.submit(stream_once, stub, i, 30.0) for i in range(5)]
        assert wait_until(lambda: sim.stats()["in_flight"] >= 5, timeout=5), sim.stats()
        yield gw, futures


def test_sigterm_drains_in_flight_streams_then_exits_zero(gateway_process, sim: SimControl):
    grace = 5.0
    gw, results, late_code, watch, rc, sent, exited = drain_with_sigterm(
        gateway_process, sim, grace, leave_on_not_serving=True
    )

    assert late_code == C.UNAVAILABLE
    assert [code for _, code, _ in results] == [C.OK] * STREAMS
    assert all(images == 5 for _, _, images in results)
    not_serving = watch.first(NOT_SERVING)
    assert not_serving is not None
    assert sent <= not_serving < min(done for done, _, _ in results), "health flipped after the calls ended"
    assert rc == 0, gw.log()
    assert exited - sent < grace
    assert "Traceback" not in gw.log()


def test_an_open_health_watch_does_not_hold_the_shutdown(gateway_process, sim: SimControl):
    """grpc's server.stop(grace) waits for every RPC, and a Watch stream never ends by itself: the
    gateway must not let one hold the shutdown once its own calls are done."""
    grace = 3.0
    gw, results, _, _, rc, sent, exited = drain_with_sigterm(
        gateway_process, sim, grace, leave_on_not_serving=False
    )

    assert [code for _, code, _ in results] == [C.OK] * STREAMS
    assert rc == 0, gw.log()
    last_call = max(done for done, _, _ in results)
    assert exited - sent < grace
    assert exited - last_call < 1.0, f"exited {exited - last_call:.2f} s after the last call ended"


def test_second_sigterm_during_a_long_grace_exits_at_once(gateway_process, sim: SimControl):
    """Observed: exit code 0 (the forced stop still returns from main normally); the calls still in
    flight end with UNAVAILABLE when the process goes."""
    with hung_streams(gateway_process, sim, grace=60.0) as (gw, futures):
        gw.signal(signal.SIGTERM)
        assert gw.wait(timeout=1.0) is None, "the first SIGTERM did not wait for the hung calls"
        second = time.monotonic()
        gw.signal(signal.SIGTERM)
        rc = gw.wait(timeout=5.0)
        took = time.monotonic() - second
        results = [f.result(timeout=10) for f in futures]

    assert rc is not None, "the second SIGTERM did not end the process"
    assert took < 2.0, f"the second SIGTERM took {took:.2f} s"
    assert rc == 0, gw.log()
    assert all(code != C.OK for _, code, _ in results)
    assert {code for _, code, _ in results} <= {C.UNAVAILABLE, C.CANCELLED}, results


def test_calls_still_running_when_the_grace_ends_are_cut_and_the_exit_is_zero(
    gateway_process, sim: SimControl
):
    grace = 1.0
    with hung_streams(gateway_process, sim, grace) as (gw, futures):
        sent = time.monotonic()
        gw.signal(signal.SIGTERM)
        rc = gw.wait(timeout=grace + 5)
        took = time.monotonic() - sent
        results = [f.result(timeout=10) for f in futures]

    assert rc == 0, gw.log()
    assert grace - 0.1 <= took < grace + 1.0, f"exited {took:.2f} s after SIGTERM, grace {grace} s"
    assert {code for _, code, _ in results} <= {C.UNAVAILABLE, C.CANCELLED}, results
    # The upstream requests were abandoned with the calls.
    assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=2), sim.stats()
