"""Upstream policies as a caller sees them: retries, the concurrency cap, fan-in coalescing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import GatewayThread
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config
from zstack_sim.control_client import SimControl

VM = zstack_sim.DEMO_VM_UUID
C = grpc.StatusCode


def request(vm: str = VM) -> svc.GetCandidateIsoRequest:
    return svc.GetCandidateIsoRequest(vm_instance_uuid=vm)


def images(stub, metadata=AUTH, timeout=10.0, vm: str = VM) -> list[str]:
    return [
        i.uuid
        for c in stub.GetCandidateIso(request(vm), metadata=metadata, timeout=timeout)
        for i in c.inventories
    ]


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "zstack_error", "code": "SYS.1010", "details": "management node[uuid:x] is not ready yet"},
        {"action": "zstack_error", "code": "SYS.1012", "details": "management node[uuid:x] is unavailable"},
        {"action": "respond", "status": 502, "body": "<html><title>502 Bad Gateway</title></html>"},
        {"action": "reset"},
    ],
)
def test_safe_failures_are_retried_and_the_call_succeeds(stub, sim: SimControl, fault):
    sim.fault(times=1, **fault)
    assert images(stub)
    assert len(sim.zstack_requests()) == 2


@pytest.mark.parametrize("code", ["SYS.1003", "SYS.1000", "SYS.1001", "ID.1001", "SYS.1007"])
def test_business_errors_are_never_retried(stub, sim: SimControl, code):
    sim.fault(times=1, action="zstack_error", code=code, details="x")
    with pytest.raises(grpc.RpcError):
        images(stub)
    assert len(sim.zstack_requests()) == 1


def test_a_body_broken_midway_is_not_retried(stub, sim: SimControl):
    sim.fault(times=1, action="reset_mid_body")
    with pytest.raises(grpc.RpcError) as info:
        images(stub)
    assert info.value.code() == C.UNAVAILABLE
    assert len(sim.zstack_requests()) == 1


def test_retries_stop_at_the_attempt_limit(make_gateway, sim: SimControl):
    stub = make_gateway(upstream_attempts=4).stub
    sim.fault(action="zstack_error", code="SYS.1010", details="not ready")
    with pytest.raises(grpc.RpcError) as info:
        images(stub)
    assert info.value.code() == C.UNAVAILABLE
    assert len(sim.zstack_requests()) == 4


def test_retries_never_pass_the_callers_deadline(make_gateway, sim: SimControl):
    stub = make_gateway(upstream_attempts=50).stub
    sim.fault(action="zstack_error", code="SYS.1010", details="not ready", delay=0.05)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        images(stub, timeout=0.6)
    assert info.value.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 0.6 + 0.25


def test_concurrency_cap_queues_then_refuses_with_retry_info(make_gateway, sim: SimControl):
    stub = make_gateway(max_upstream_calls=1, upstream_queue_timeout=0.3, coalesce=False).stub
    sim.fault(action="hang", times=1)
    first = stub.GetCandidateIso(request(), metadata=AUTH, timeout=5)
    deadline = time.monotonic() + 5
    while not sim.zstack_requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as info:
        images(stub, timeout=5)
    d = decode(info.value)
    assert d.code == C.RESOURCE_EXHAUSTED
    assert "--max-upstream-calls" in d.message
    retry = [
        x for x in rpc_status.from_call(info.value).details if x.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    ]
    assert len(retry) == 1
    first.cancel()
    # The slot comes back once the hanging call is abandoned.
    assert images(stub, timeout=5)


def _burst(stub, n: int, metadata_for=lambda i: AUTH, vm: str = VM):
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        try:
            return images(stub, metadata=metadata_for(i), vm=vm)
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_identical_concurrent_calls_share_one_upstream_request(stub, sim: SimControl):
    sim.config(latency_ms=300)
    results = _burst(stub, 20)
    assert all(r == results[0] and isinstance(r, list) and r for r in results)
    assert len(sim.zstack_requests()) == 1


def test_calls_with_different_credentials_never_share(stub, sim: SimControl):
    sim.config(latency_ms=300)
    results = _burst(
        stub, 4, metadata_for=lambda i: AUTH if i % 2 else (("authorization", "OAuth " + "0" * 32),)
    )
    assert sorted(map(str, results)).count(str(C.UNAUTHENTICATED)) == 2
    assert len(sim.zstack_requests()) == 2


def test_shared_errors_reach_every_caller(stub, sim: SimControl):
    sim.config(latency_ms=300)
    results = _burst(stub, 10, vm=zstack_sim.DEMO_MISSING_VM_UUID)
    assert results == [C.NOT_FOUND] * 10
    assert len(sim.zstack_requests()) == 1


def test_a_caller_that_cancels_does_not_cancel_the_others(stub, sim: SimControl):
    sim.config(latency_ms=500)
    leader = stub.GetCandidateIso(request(), metadata=AUTH, timeout=10)
    time.sleep(0.1)
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(images, stub)
        time.sleep(0.1)
        leader.cancel()
        assert follower.result(10)
    assert len(sim.zstack_requests()) == 1


def test_coalescing_can_be_switched_off(make_gateway, sim: SimControl):
    stub = make_gateway(coalesce=False).stub
    sim.config(latency_ms=200)
    _burst(stub, 5)
    assert len(sim.zstack_requests()) == 5


def test_calls_arriving_during_shutdown_are_refused_while_in_flight_ones_finish(simulator, sim: SimControl):
    gw = GatewayThread(Config(listen="127.0.0.1:0", zstack_url=simulator.url, shutdown_grace=5).check())
    stub = svc_grpc.VmInstanceServiceStub(gw.channel())
    sim.config(latency_ms=800)
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(images, stub)
        time.sleep(0.3)
        stopping = pool.submit(gw.stop, 5)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as info:
            images(stub)
        d = decode(info.value)
        assert d.code == C.UNAVAILABLE
        assert d.info.reason == "GATEWAY_SHUTTING_DOWN"
        assert len(in_flight.result(10)) == 5
        stopping.result(10)
