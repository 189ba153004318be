"""What an operator sees: request ids, Prometheus metrics, JSON log lines, health that follows ZStack."""

from __future__ import annotations

import json
import logging
import time
import urllib.request

import grpc
import pytest
import zstack_sim
from conftest import AUTH, SESSION
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import GatewayThread
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config
from zstack_gateway.telemetry.logs import JsonFormatter
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port, scrape

VM = zstack_sim.DEMO_VM_UUID


@pytest.fixture
def observed(make_gateway):
    """A gateway with metrics (``metrics_url``) and readiness checks every 0.1 s."""
    port = free_port()
    gw = make_gateway(metrics_listen=f"127.0.0.1:{port}", readiness_interval=0.1, default_timeout=30.0)
    gw.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return gw


def test_request_id_round_trip_and_reaches_zstack(stub, sim: SimControl):
    call = stub.GetCandidateIso(
        svc.GetCandidateIsoRequest(vm_instance_uuid=VM),
        metadata=(
            *AUTH,
            ("x-request-id", "abc-123"),
            ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
        ),
        timeout=5,
    )
    list(call)
    assert ("x-request-id", "abc-123") in call.initial_metadata()
    headers = sim.zstack_requests()[-1]["headers"]
    assert headers["X-Request-Id"] == "abc-123"
    assert headers["traceparent"] == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def test_a_request_id_is_made_when_the_caller_sends_none_or_a_bad_one(stub, sim: SimControl):
    for extra in ((), (("x-request-id", "bad id with spaces"),)):
        call = stub.GetCandidateIso(
            svc.GetCandidateIsoRequest(vm_instance_uuid=VM), metadata=(*AUTH, *extra), timeout=5
        )
        list(call)
        rid = dict(call.initial_metadata())["x-request-id"]
        assert len(rid) == 32 and rid != "bad id with spaces"
        assert sim.zstack_requests()[-1]["headers"]["X-Request-Id"] == rid


def test_request_id_comes_back_on_errors_too(stub, sim: SimControl):
    call = stub.GetCandidateIso(
        svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_MISSING_VM_UUID),
        metadata=(*AUTH, ("x-request-id", "err-1")),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError):
        list(call)
    assert ("x-request-id", "err-1") in call.initial_metadata()


def test_metrics_count_rpcs_upstream_responses_images_and_coalescing(observed, sim: SimControl):
    with observed.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        images = sum(
            len(c.inventories)
            for c in stub.GetCandidateIso(
                svc.GetCandidateIsoRequest(vm_instance_uuid=VM), metadata=AUTH, timeout=5
            )
        )
        with pytest.raises(grpc.RpcError):
            list(
                stub.GetCandidateIso(
                    svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_MISSING_VM_UUID),
                    metadata=AUTH,
                    timeout=5,
                )
            )
    m = scrape(observed.metrics_url)
    assert m['zstack_gateway_rpcs_total{code="OK",method="GetCandidateIso"}'] == 1
    assert m['zstack_gateway_rpcs_total{code="NOT_FOUND",method="GetCandidateIso"}'] == 1
    assert m["zstack_gateway_images_streamed_total"] == images
    api = "/v1/vm-instances/{uuid}/iso-candidates"
    ok = f'zstack_gateway_upstream_responses_total{{api="{api}",http_status="200",zstack_code="none"}}'
    nf = f'zstack_gateway_upstream_responses_total{{api="{api}",http_status="503",zstack_code="SYS.1003"}}'
    assert m[ok] == 1 and m[nf] == 1
    assert m['zstack_gateway_rpc_duration_seconds_count{method="GetCandidateIso"}'] == 2
    assert m["zstack_gateway_rpcs_in_flight"] == 0
    assert m["zstack_gateway_upstream_in_flight"] == 0
    assert m["zstack_gateway_zstack_ready"] == 1
    assert "zstack_gateway_coalesced_calls_total" in m
    # Label values stay bounded: no UUID appears anywhere.
    with urllib.request.urlopen(observed.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert VM not in text and SESSION not in text and zstack_sim.DEMO_MISSING_VM_UUID not in text


def test_health_follows_zstack_readiness_with_watch(observed, sim: SimControl):
    with observed.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "zstack.v1.VmInstanceService"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        sim.set_ready(False)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The liveness name stays SERVING: a ZStack outage is no reason to restart the gateway.
        liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert liveness.status == health_pb2.HealthCheckResponse.SERVING
        sim.set_ready(True)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_one_bad_readiness_answer_does_not_flip_health(observed, sim: SimControl):
    with observed.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        sim.fault(
            path="management-nodes/ready", action="respond", status=503, body="<html>busy</html>", times=1
        )
        time.sleep(0.5)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="")).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert observed.gateway.readiness.serving is True


def test_health_not_serving_when_zstack_is_down_and_back_when_it_returns():
    port = free_port()
    sim = zstack_sim.run_in_thread(zstack_sim.demo_data(), port=port)
    gw = GatewayThread(Config(listen="127.0.0.1:0", zstack_url=sim.url, readiness_interval=0.1).check())
    try:
        with gw.channel() as ch:
            health = health_pb2_grpc.HealthStub(ch)
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service="zstack.v1.VmInstanceService"), timeout=20
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            sim.close()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            sim = zstack_sim.run_in_thread(zstack_sim.demo_data(), port=port)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        gw.stop()
        sim.close()


def test_each_call_logs_one_json_line_without_secrets(stub, sim: SimControl, caplog):
    caplog.set_level(logging.INFO, logger="zstack_gateway")
    with pytest.raises(grpc.RpcError):
        list(
            stub.GetCandidateIso(
                svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_MISSING_VM_UUID),
                metadata=(*AUTH, ("x-request-id", "log-1")),
                timeout=5,
            )
        )
    deadline = time.monotonic() + 3  # the line is written as the call ends, on the gateway's thread
    while time.monotonic() < deadline:
        lines = [
            JsonFormatter().format(r) for r in caplog.records if getattr(r, "request_id", None) == "log-1"
        ]
        if lines:
            break
        time.sleep(0.02)
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "WARNING"
    assert entry["rpc"] == "/zstack.v1.VmInstanceService/GetCandidateIso"
    assert entry["vm"] == zstack_sim.DEMO_MISSING_VM_UUID
    assert entry["grpc_code"] == "NOT_FOUND"
    assert entry["zstack_code"] == "SYS.1003"
    assert entry["upstream_status"] == 503
    assert entry["duration_ms"] >= entry["upstream_ms"] > 0
    assert SESSION not in lines[0]
