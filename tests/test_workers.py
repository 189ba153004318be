"""--workers N: several processes share the port; connections spread; SIGTERM stops them all."""

from __future__ import annotations

import json
import socket
import time

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.processes import free_port, scrape, wait_until


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (worker i serves metrics on the metrics port + i)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def rpcs_served(metrics_port: int) -> float:
    metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    return metrics.get('zstack_gateway_rpcs_total{code="OK",method="GetCandidateIso"}', 0.0)


def test_two_workers_share_the_port_and_stop_together(gateway_process):
    metrics = free_port_pair()
    port = free_port()
    while port in (metrics, metrics + 1):
        port = free_port()
    gw = gateway_process(
        "--workers",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{metrics}",
        "--log-level",
        "WARNING",
        listen=f"127.0.0.1:{port}",
    )
    assert wait_until(lambda: gw.output().count(" ready on ") >= 2, timeout=30), gw.output() + gw.log()
    ready = gw.output().splitlines()
    assert all(f"ready on 127.0.0.1:{port} (worker pid" in line for line in ready), ready
    assert len({line.split("pid ")[1].split(")")[0] for line in ready}) == 2
    # Separate connections are spread by the kernel; 40 of them reach both workers.
    for _ in range(40):
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            chunks = svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(
                svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID),
                metadata=AUTH,
                timeout=5,
            )
            assert sum(len(c.inventories) for c in chunks) == 5
    served = [rpcs_served(metrics), rpcs_served(metrics + 1)]
    assert sum(served) == 40
    assert all(n > 0 for n in served), served
    assert gw.stop(15) == 0, gw.log()
    time.sleep(0.1)
    with socket.socket() as s:  # the port is free again: no worker was left behind
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_calls_log_line_is_written_when_the_gateway_stops_right_after(gateway_process, workers: str):
    """Log lines wait up to 20 ms to be written in a batch: a stop right after the last calls still
    writes every one of them, from each worker."""
    port = free_port()
    gw = gateway_process("--workers", workers, listen=f"127.0.0.1:{port}")
    assert wait_until(lambda: gw.output().count(" ready on ") >= int(workers), timeout=30), gw.log()
    ids = [f"last-{i}" for i in range(20)]
    for rid in ids:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            list(
                svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(
                    svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID),
                    metadata=(*AUTH, ("x-request-id", rid)),
                    timeout=5,
                )
            )
    assert gw.stop(15) == 0, gw.log()
    logged = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    seen = [entry["request_id"] for entry in logged if entry.get("logger") == "zstack_gateway.rpc"]
    assert sorted(seen) == sorted(ids), gw.log()
