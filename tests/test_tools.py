"""The gateway as grpcurl, buf and the process itself show it: reflection, health, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import SESSION
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zstack_sim.processes import GATEWAY_READY, Proc, console_script, free_port, start, wait_until

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = Path(sys.executable).with_name("grpcurl")
BUF = ROOT / "node_modules" / ".bin" / "buf"


def grpcurl(target: str, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext FLAGS TARGET ARGS...`` (ARGS: list, describe SYMBOL, or a method)."""
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *flags, target, *args], capture_output=True, text=True, timeout=30
    )


def test_grpcurl_lists_and_describes_through_reflection(gateway):
    out = grpcurl(gateway.target, "list")
    assert out.returncode == 0, out.stderr
    services = out.stdout.split()
    assert "zstack.v1.VmInstanceService" in services
    assert "grpc.health.v1.Health" in services
    out = grpcurl(gateway.target, "describe", "zstack.v1.ImageInventory")
    assert out.returncode == 0, out.stderr
    assert "backup_storage_refs" in out.stdout


def grpcurl_candidates(target: str, vm: str) -> subprocess.CompletedProcess[str]:
    """GetCandidateIso for ``vm`` with the demo session, through grpcurl."""
    payload = json.dumps({"vmInstanceUuid": vm})
    flags = ("-H", f"authorization: OAuth {SESSION}", "-d", payload)
    return grpcurl(target, "zstack.v1.VmInstanceService/GetCandidateIso", flags=flags)


def test_grpcurl_calls_and_prints_zstack_json_names(gateway, sim):
    out = grpcurl_candidates(gateway.target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    assert '"backupStorageRefs"' in out.stdout
    assert '"mediaType"' in out.stdout
    assert "TinyLinux" in out.stdout


def test_grpcurl_shows_a_readable_not_found(gateway, sim):
    out = grpcurl_candidates(gateway.target, zstack_sim.DEMO_MISSING_VM_UUID)
    assert out.returncode != 0
    assert "NotFound" in out.stderr
    assert "ZStack SYS.1003: invalid field[vmInstanceUuid]" in out.stderr


def test_grpcurl_health_check(gateway):
    for service in ("", "zstack.v1.VmInstanceService"):
        out = grpcurl(
            gateway.target, "grpc.health.v1.Health/Check", flags=("-d", json.dumps({"service": service}))
        )
        assert out.returncode == 0, out.stderr
        assert '"status": "SERVING"' in out.stdout


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make node`")
def test_buf_curl_calls_the_gateway(gateway, sim):
    out = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-H",
            f"authorization: OAuth {SESSION}",
            "-d",
            json.dumps({"vmInstanceUuid": zstack_sim.DEMO_VM_UUID}),
            f"http://{gateway.target}/zstack.v1.VmInstanceService/GetCandidateIso",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "TinyLinux" in out.stdout


def _start_demo(log_dir: Path, port: int) -> Proc:
    command = [*console_script("zstack-gateway", "zstack_gateway"), "--demo", "--shutdown-grace", "5"]
    return start("demo", [*command, "--listen", f"127.0.0.1:{port}"], GATEWAY_READY, log_dir, cwd=ROOT)


def test_demo_prints_a_grpcurl_line_that_works_as_printed(tmp_path):
    port = free_port()
    with _start_demo(tmp_path, port) as proc:
        assert wait_until(lambda: len(proc.output().splitlines()) >= 3, timeout=10), proc.output()
        ready, try_it, command = (line.strip() for line in proc.output().splitlines()[:3])
        assert f"ready on 127.0.0.1:{port}" in ready
        assert try_it == "try it:"
        assert command.startswith(".venv/bin/grpcurl ") or command.startswith("grpcurl ")
        out = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env={**os.environ, "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}"},
        )
        assert out.returncode == 0, out.stderr
        assert "TinyLinux" in out.stdout
        assert proc.stop(15) == 0


def test_sigterm_drains_in_flight_calls_and_flips_health_first(tmp_path):
    with _start_demo(tmp_path, free_port()) as proc, grpc.insecure_channel(proc.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        proc.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.wait(15) == 0


def test_bad_configuration_exits_2_with_a_message():
    exe = Path(sys.executable).with_name("zstack-gateway")
    out = subprocess.run(
        [str(exe), "--zstack-url", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith(("ZSTACK_", "GATEWAY_"))},
    )
    assert out.returncode == 2
    assert re.search(r"--zstack-url must start with http", out.stderr)


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make node`")
def test_buf_curl_lists_describes_and_health_checks_through_reflection(gateway):
    base = f"http://{gateway.target}"
    services = _buf_curl("--list-services", base)
    assert services.returncode == 0, services.stderr
    assert "zstack.v1.VmInstanceService" in services.stdout.split()
    assert "grpc.health.v1.Health" in services.stdout.split()
    methods = _buf_curl("--list-methods", base)
    assert methods.returncode == 0, methods.stderr
    assert "zstack.v1.VmInstanceService/GetCandidateIso" in methods.stdout.split()
    health = _buf_curl(
        "-d", '{"service": "zstack.v1.VmInstanceService"}', f"{base}/grpc.health.v1.Health/Check"
    )
    assert health.returncode == 0, health.stderr
    assert '"status": "SERVING"' in health.stdout
