"""Shared fixtures: a real ZStack simulator and a real gateway, both on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import zstack_sim
from harness import GatewayThread, SimControl
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config

SESSION = zstack_sim.DEMO_SESSION_UUID
AUTH = (("authorization", f"OAuth {SESSION}"),)


@pytest.fixture(scope="session")
def simulator() -> Iterator[zstack_sim.ThreadedSimulator]:
    with zstack_sim.run_in_thread(zstack_sim.demo_data()) as sim:
        yield sim


@pytest.fixture
def sim(simulator: zstack_sim.ThreadedSimulator) -> Iterator[SimControl]:
    """The shared simulator, reset to its demo data, with no faults and an empty request log."""
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
