"""--workers N: several processes share the port; connections spread; SIGTERM stops them all."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc

EXE = Path(sys.executable).with_name("zstack-gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('zstack_gateway_rpcs_total{code="OK"'):
                return float(line.rpartition(" ")[2])
    return 0.0


def test_two_workers_share_the_port_and_stop_together(simulator):
    metrics = free_port_pair()
    port = free_port()
    while port in (metrics, metrics + 1):
        port = free_port()
    proc = subprocess.Popen(
        [
            str(EXE),
            "--listen",
            f"127.0.0.1:{port}",
            "--zstack-url",
            simulator.url,
            "--workers",
            "2",
            "--metrics-listen",
            f"127.0.0.1:{metrics}",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = [proc.stdout.readline(), proc.stdout.readline()]
        if not all(f"ready on 127.0.0.1:{port} (worker pid" in line for line in ready):
            proc.kill()
            pytest.fail(f"workers did not both start: {ready!r}\n{proc.communicate(timeout=10)[1]}")
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)
    with socket.socket() as s:  # the port is free again: no worker was left behind
        s.bind(("127.0.0.1", port))
