"""The rest of the ISO workflow in the zstack_iso client library and the zstack-iso command:
candidate VMs, attach and detach, against the real gateway and simulator."""

from __future__ import annotations

import asyncio
import json

import pytest
import zstack_sim
from conftest import SESSION
from harness import GatewayThread
from test_client import run_cli
from zstack_iso import AsyncIsoClient, IsoClient, ZStackError
from zstack_sim.control_client import SimControl

ISO = zstack_sim.DEMO_ISO_UUID
STOPPED = zstack_sim.DEMO_STOPPED_VM_UUID
RUNNING = zstack_sim.DEMO_VM_UUID


@pytest.fixture
def target(gateway: GatewayThread, sim: SimControl) -> str:
    return gateway.target


def test_client_lists_candidate_vms_attaches_and_detaches(target: str, sim: SimControl) -> None:
    with IsoClient(target, session=SESSION, timeout=10) as client:
        assert [vm.uuid for vm in client.list_candidate_vms(ISO)] == [RUNNING, STOPPED]
        vm = client.attach_iso(STOPPED, ISO, request_id="client-1")
        assert [rom.iso_uuid for rom in vm.vm_cd_roms] == [ISO]
        again = client.attach_iso(STOPPED, ISO, request_id="client-1")  # the same job's result
        assert again == vm and len(sim.accepted_jobs()) == 1
        with pytest.raises(ZStackError) as info:
            client.attach_iso(STOPPED, ISO)  # a new attach: ZStack refuses it
        assert info.value.code.name == "FAILED_PRECONDITION" and info.value.zstack_code == "SYS.1006"
        assert info.value.job_uuid == sim.accepted_jobs()[-1]
        vm = client.detach_iso(STOPPED, ISO)
        assert not vm.vm_cd_roms[0].HasField("iso_uuid")
        with pytest.raises(ZStackError) as info:
            client.attach_iso(STOPPED, "not-a-uuid")
        assert info.value.code.name == "INVALID_ARGUMENT"


def test_async_client_attach_and_detach(target: str, sim: SimControl) -> None:
    async def main() -> tuple[list[str], list[str | None], list[str | None]]:
        async with AsyncIsoClient(target, session=SESSION, timeout=10) as client:
            vms = [vm.uuid async for vm in client.iter_candidate_vms(ISO)]
            attached = await client.attach_iso(RUNNING, ISO, cd_rom_uuid=None, request_id="async-1")
            detached = await client.detach_iso(RUNNING)
            return (
                vms,
                [r.iso_uuid if r.HasField("iso_uuid") else None for r in attached.vm_cd_roms],
                [r.iso_uuid if r.HasField("iso_uuid") else None for r in detached.vm_cd_roms],
            )

    vms, attached, detached = asyncio.run(main())
    assert vms == [RUNNING, STOPPED] and attached == [ISO] and detached == [None]


def test_cli_vms_attach_detach(target: str, sim: SimControl) -> None:
    auth = ("--target", target, "--session", SESSION)
    done = run_cli("vms", ISO, *auth)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["UUID", "NAME", "STATE", "ATTACHED", "ISOS"]
    assert lines[-1] == "2 VMs"
    done = run_cli("attach", STOPPED, ISO, "--request-id", "cli-1", *auth)
    assert done.returncode == 0, done.stderr
    assert ISO in done.stdout and "DEVICE" in done.stdout
    done = run_cli("vms", ISO, "--json", *auth)
    stopped = next(vm for vm in json.loads(done.stdout) if vm["uuid"] == STOPPED)
    assert stopped["vmCdRoms"][0]["isoUuid"] == ISO
    assert isinstance(stopped["memorySize"], int)  # 64-bit numbers as numbers, as ZStack writes them
    rom = stopped["vmCdRoms"][0]["uuid"]
    # Attaching again without the id is a second attach: ZStack refuses it, and the message says
    # how to pick up this call's job again.
    done = run_cli("attach", STOPPED, ISO, "--cd-rom", rom, *auth)
    assert done.returncode == 1
    assert done.stderr.startswith("zstack-iso: FAILED_PRECONDITION: ZStack SYS.1006")
    assert "--request-id " in done.stderr
    done = run_cli("detach", STOPPED, "--json", *auth)
    assert done.returncode == 0, done.stderr
    assert "isoUuid" not in json.loads(done.stdout)["vmCdRoms"][0]
    assert len(sim.accepted_jobs()) == 3
