"""Shared fixtures: a real ZStack simulator and real gateways, all on loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import zstack_sim
from harness import Gateways, GatewayThread
from hostile import HostileUpstream
from pki import HAVE_OPENSSL, Pki, make_pki
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config
from zstack_sim.control_client import SimControl
from zstack_sim.processes import Proc, start_gateway

SESSION = zstack_sim.DEMO_SESSION_UUID
AUTH = (("authorization", f"OAuth {SESSION}"),)
#: 2^53 + 1: the smallest int64 a JavaScript number cannot hold exactly.
BEYOND_DOUBLE = 2**53 + 1


@pytest.fixture(scope="session")
def simulator() -> Iterator[zstack_sim.ThreadedSimulator]:
    with zstack_sim.run_in_thread(zstack_sim.demo_data()) as sim:
        yield sim


@pytest.fixture
def sim(simulator: zstack_sim.ThreadedSimulator) -> Iterator[SimControl]:
    """The simulator (a module may have its own), reset to its data, with no faults and an empty
    request log."""
    control = SimControl(simulator.url)
    control.reset()
    yield control
    control.reset()


@pytest.fixture(scope="session")
def gateway(simulator: zstack_sim.ThreadedSimulator) -> Iterator[GatewayThread]:
    gw = GatewayThread(Config(listen="127.0.0.1:0", zstack_url=simulator.url, default_timeout=5.0).check())
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    with gateway.channel() as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel, sim: SimControl) -> svc_grpc.VmInstanceServiceStub:
    return svc_grpc.VmInstanceServiceStub(channel)


@pytest.fixture
def make_gateway(simulator: zstack_sim.ThreadedSimulator) -> Iterator[Gateways]:
    """``make_gateway(**config)``: a gateway in front of the simulator (see :class:`Gateways` for
    the defaults), stopped after the test."""
    with Gateways(simulator.url) as gateways:
        yield gateways


@pytest.fixture(scope="module")
def module_gateways(simulator: zstack_sim.ThreadedSimulator) -> Iterator[Gateways]:
    """:func:`make_gateway` for module-scoped fixtures: its gateways stop after the module."""
    with Gateways(simulator.url) as gateways:
        yield gateways


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Throw-away certificates (see :mod:`pki`); the test is skipped without the openssl CLI."""
    if not HAVE_OPENSSL:
        pytest.skip("needs the openssl CLI to make certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def upstream(simulator: zstack_sim.ThreadedSimulator) -> Iterator[HostileUpstream]:
    """A hostile ZStack in front of the simulator (see :mod:`hostile`), for the module's tests."""
    with HostileUpstream(simulator.url) as up:
        yield up


@pytest.fixture(scope="module")
def beyond_double_target(module_gateways: Gateways) -> Iterator[str]:
    """A gateway whose simulator says the demo's CentOS image is BEYOND_DOUBLE bytes."""
    data = zstack_sim.demo_data()
    [centos] = [i for i in data.images.values() if i["name"].startswith("CentOS-7")]
    centos["size"] = BEYOND_DOUBLE
    with zstack_sim.run_in_thread(data) as sim:
        yield module_gateways(zstack_url=sim.url).target


@pytest.fixture
def gateway_process(simulator: zstack_sim.ThreadedSimulator, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``gateway_process(*args, zstack_url=simulator.url, **kwargs)``: ``zstack-gateway ARGS`` as a
    process of its own (:func:`zstack_sim.processes.start_gateway`, keyword arguments included),
    its output in ``tmp_path``; killed after the test if it still runs."""
    started: list[Proc] = []

    def start(*args: str, zstack_url: str = simulator.url, **kwargs: object) -> Proc:
        proc = start_gateway(tmp_path, zstack_url, *args, name=f"gateway-{len(started)}", **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
