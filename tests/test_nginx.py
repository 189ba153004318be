"""Two gateway replicas behind nginx (``grpc_pass``), configured by deploy/nginx/zstack-gateway.conf.

Each replica is a ``zstack-gateway`` process (so that one can be killed) in front of the one test
simulator; nginx listens with HTTP/2 on a loopback port and balances calls across both. Through
nginx: streams arrive whole, an error status keeps its details trailer, reflection and health work,
and after one replica dies every call is served by the other.

Skipped when nginx is not installed (``apt-get install nginx-light``); ``.ci/run`` installs it and
sets REQUIRE_NGINX=1, which turns the skip into a failure, so CI always runs these tests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from grpc_health.v1 import health_pb2, health_pb2_grpc
from statuses import decode
from zstack.v1 import vm_instance_service_pb2
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import Proc, free_port, start_gateway, wait_until

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = Path(sys.executable).with_name("grpcurl")
NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))

if NGINX is None and os.environ.get("REQUIRE_NGINX") == "1":
    raise RuntimeError("REQUIRE_NGINX=1 but nginx is not installed (apt-get install nginx-light)")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx-light; .ci/run installs it)"
)

DEPLOY_CONF = ROOT / "deploy" / "nginx" / "zstack-gateway.conf"

# The main configuration around deploy/nginx/zstack-gateway.conf: everything in the test's
# directory, and $upstream_addr in the access log to show which replicas each call went to.
MAIN_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format grpc '$upstream_addr|$status|$request_uri';
    access_log {tmp}/access.log grpc;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {include};
}}
"""


def site_conf(listen: str, replicas: list[str]) -> str:
    """deploy/nginx/zstack-gateway.conf with the test's replicas and listen address in it."""
    text = DEPLOY_CONF.read_text()
    servers = iter(replicas)
    text, count = re.subn(r"(?m)^(\s*server )\S+:\d+", lambda m: m.group(1) + next(servers), text)
    assert count == len(replicas), "deploy/nginx/zstack-gateway.conf: expected one server line per replica"
    text, count = re.subn(r"(?m)^(\s*listen )\S+ http2;", rf"\g<1>{listen} http2;", text)
    assert count == 1, "deploy/nginx/zstack-gateway.conf: expected one `listen ... http2;`"
    return text


QUIET = ("--shutdown-grace", "0", "--log-level", "WARNING")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Proxy:
    target: str
    replicas: list[Proc]
    access_log: Path

    def upstreams_served(self) -> list[str]:
        """For each call nginx logged, in order, the replicas it tried ("A, B" when A failed)."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [line.split("|")[0] for line in lines]


@pytest.fixture(scope="module")
def proxy(
    simulator: zstack_sim.ThreadedSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    yield from run_proxy(simulator.url, tmp_path_factory.mktemp("nginx"))


@pytest.fixture
def own_proxy(simulator: zstack_sim.ThreadedSimulator, tmp_path: Path) -> Iterator[Proxy]:
    """Replicas and nginx of this test alone, for a test that kills a replica."""
    yield from run_proxy(simulator.url, tmp_path)


def run_proxy(zstack_url: str, tmp: Path) -> Iterator[Proxy]:
    assert NGINX is not None
    replicas: list[Proc] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        # The ready line comes once the gateway serves and its health has its first real status.
        for name in ("a", "b"):
            replicas.append(start_gateway(tmp, zstack_url, *QUIET, name=f"gateway-{name}", cwd=ROOT))
        port = free_port()
        site = tmp / "zstack-gateway.conf"
        site.write_text(site_conf(f"127.0.0.1:{port}", [r.address for r in replicas]))
        conf = tmp / "nginx.conf"
        conf.write_text(MAIN_CONF.format(tmp=tmp, include=site))
        error_log = tmp / "error.log"
        # -e: the error log before the configuration is read (nginx would open /var/log/nginx/error.log).
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(error_log), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: nginx.poll() is not None or listening(port), timeout=15)
        assert listening(port), (
            f"nginx did not start ({nginx.poll()}): {error_log.read_text(errors='replace')}"
        )
        yield Proxy(f"127.0.0.1:{port}", replicas, tmp / "access.log")
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
        for replica in replicas:
            replica.stop()


def call(channel: grpc.Channel, vm_uuid: str = zstack_sim.DEMO_VM_UUID) -> list[str]:
    """One GetCandidateIso through ``channel``: the images' names, in order."""
    stub = svc_grpc.VmInstanceServiceStub(channel)
    request = vm_instance_service_pb2.GetCandidateIsoRequest(vm_instance_uuid=vm_uuid)
    return [
        image.name
        for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=10)
        for image in chunk.inventories
    ]


def test_streams_pass_through_nginx_to_both_replicas(proxy: Proxy, sim: SimControl) -> None:
    with grpc.insecure_channel(proxy.replicas[0].address) as direct:
        expected = call(direct)
    assert "TinyLinux" in expected
    before = len(proxy.upstreams_served())
    with grpc.insecure_channel(proxy.target) as channel:
        for _ in range(6):
            assert call(channel) == expected
    served = proxy.upstreams_served()[before:]
    assert len(served) == 6
    assert set(served) == {replica.address for replica in proxy.replicas}, "nginx did not balance the calls"


def test_an_error_status_keeps_its_details_through_nginx(proxy: Proxy, sim: SimControl) -> None:
    with grpc.insecure_channel(proxy.target) as channel, pytest.raises(grpc.RpcError) as info:
        call(channel, zstack_sim.DEMO_MISSING_VM_UUID)
    decoded = decode(info.value)
    assert decoded.code == grpc.StatusCode.NOT_FOUND
    assert "ZStack SYS.1003" in decoded.message
    assert decoded.error_code is not None
    assert decoded.error_code.code == "SYS.1003"
    assert decoded.info.reason == "ZSTACK_SYS_1003"


def test_reflection_and_health_work_through_nginx(proxy: Proxy) -> None:
    out = subprocess.run(
        [str(GRPCURL), "-plaintext", proxy.target, "list"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "zstack.v1.VmInstanceService" in out.stdout.split()
    with grpc.insecure_channel(proxy.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="zstack.v1.VmInstanceService"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_calls_after_a_replica_dies_are_served_by_the_other(own_proxy: Proxy, sim: SimControl) -> None:
    """A crashed replica costs a caller at most the first call after the crash.

    nginx retries a call whose connection to the dead replica fails (``grpc_next_upstream error``)
    on the other one, and then leaves the dead one out for ``fail_timeout``. A call is never retried
    once its request reached a replica, so a call in flight on the dying replica fails; this test
    kills the replica between calls, where a user expects no failure at all, and allows at most the
    very first call afterwards to fail with UNAVAILABLE.
    """
    dead, alive = own_proxy.replicas
    with grpc.insecure_channel(own_proxy.target) as channel:
        for _ in range(4):
            assert "TinyLinux" in call(channel)
        assert set(own_proxy.upstreams_served()) == {dead.address, alive.address}, "not balanced"
        dead.kill()
        logged = len(own_proxy.upstreams_served())
        failures: list[tuple[int, grpc.StatusCode]] = []
        for i in range(20):
            try:
                assert "TinyLinux" in call(channel)
            except grpc.RpcError as err:
                failures.append((i, decode(err).code))
    assert failures in ([], [(0, grpc.StatusCode.UNAVAILABLE)]), failures
    # Each call that nginx sent to the dead replica first was passed on to the live one.
    for tried in own_proxy.upstreams_served()[logged:]:
        assert tried.split(", ")[-1] == alive.address, tried


def test_nginx_logs_no_upstream_errors_in_normal_operation(proxy: Proxy) -> None:
    text = (proxy.access_log.parent / "error.log").read_text(errors="replace")
    assert not re.search(r"\[(error|crit|alert|emerg)\]", text), text
