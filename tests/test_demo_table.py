"""The data table a newcomer reads (``zstack-gateway --demo``'s ready output, ``zstack-sim`` at start,
``zstack-sim --print-table``) says what the gateway really answers: every printed VM uuid, session,
account and AccessKey is called through a real gateway and answers as its row says."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
import zstack_sim
from zstack.v1 import image_service_pb2 as img_svc
from zstack.v1 import image_service_pb2_grpc as img_svc_grpc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.processes import free_port, start_gateway, start_simulator
from zstack_sim.table import render
from zstack_sim.zones import resolve_tz

BIN = Path(sys.executable).parent
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZSTACK_", "GRPC_"))}
SECTIONS = ("accounts", "access keys", "sessions", "VMs", "CD-ROMs", "about the VMs", "ISOs")


def parse(lines: list[str]) -> dict[str, list[list[str]]]:
    """The table's sections (by the words before their parenthesis), each a list of rows of cells
    (cells are separated by two spaces or more)."""
    table: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in lines:
        if not line.startswith(" "):
            name = line.split(" (")[0].rstrip(":")
            rows = table.setdefault(name, []) if name in SECTIONS else None
        elif rows is not None and line.strip():
            rows.append(re.split(r"\s{2,}", line.strip()))
    return table


def demo_output(proc: subprocess.Popen[bytes], wait: float = 60.0) -> Iterator[str]:
    """The demo gateway's stdout up to the table's NOT_FOUND row (the last VM row); fails when
    nothing more comes for ``wait`` seconds (a gateway that prints no table)."""
    out: IO[bytes] | None = proc.stdout  # unbuffered: select sees every byte not yet read
    assert out is not None
    while True:
        if not select.select([out], [], [], wait)[0]:
            pytest.fail(f"no data table in the demo's ready output within {wait:g} s")
        line = out.readline().decode()
        if not line:
            pytest.fail("the gateway ended before it printed the data table")
        yield line.rstrip("\n")
        if line.strip().startswith(zstack_sim.DEMO_MISSING_VM_UUID):
            return


def gateway(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``zstack-gateway --demo ARGS``: the process and its address, once ready."""
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "zstack-gateway"),
            "--demo",
            "--listen",
            f"127.0.0.1:{port}",
            "--shutdown-grace",
            "1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
        env={**CLEAN_ENV, **(env or {})},
    )
    return proc, f"127.0.0.1:{port}"


def call(address: str, vm: str, session: str | None = None) -> tuple[grpc.StatusCode, list[str]]:
    """GetCandidateIso for ``vm``: its status and the images' names."""
    metadata = (("authorization", f"OAuth {session}"),) if session else ()
    with grpc.insecure_channel(address) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        try:
            replies = list(
                stub.GetCandidateIso(
                    svc.GetCandidateIsoRequest(vm_instance_uuid=vm), metadata=metadata, timeout=15
                )
            )
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            return err.code(), []
    return grpc.StatusCode.OK, [image.name for reply in replies for image in reply.inventories]


def check_vms(address: str, table: dict[str, list[list[str]]], session: str) -> None:
    """Each VM row's uuid answers what its last cell says."""
    assert table["VMs"]
    for uuid, _name, _state, shows in table["VMs"]:
        code, names = call(address, uuid, session)
        if shows.startswith("NOT_FOUND"):
            assert code == grpc.StatusCode.NOT_FOUND, (uuid, shows)
        elif shows.startswith("no images"):
            assert (code, names) == (grpc.StatusCode.OK, []), (uuid, shows)
        else:
            count, _, listed = shows.partition(": ")
            assert code == grpc.StatusCode.OK, (uuid, shows)
            assert count == f"{len(names)} image" + ("s" if len(names) != 1 else ""), (uuid, shows, names)
            assert listed.removesuffix(", ...").split(", ") == names[:3], (uuid, shows, names)


def check_sessions(address: str, table: dict[str, list[list[str]]], vm: str) -> None:
    for uuid, _account, state in table["sessions"]:
        code, _ = call(address, vm, uuid)
        expected = grpc.StatusCode.OK if state.startswith("valid") else grpc.StatusCode.UNAUTHENTICATED
        assert code == expected, (uuid, state)


def test_the_demo_table_is_what_the_gateway_answers():
    proc, address = gateway()
    try:
        lines = list(demo_output(proc))
        assert lines[0].startswith(f"zstack-gateway ready on {address}")
        assert "the data (zstack-sim --print-table prints it alone):" in lines
        table = parse(lines)
        [[session, _, state]] = table["sessions"]
        assert state.startswith("valid")
        check_sessions(address, table, zstack_sim.DEMO_VM_UUID)
        other = call(address, zstack_sim.DEMO_VM_UUID, "0123456789abcdef0123456789abcdef")[0]
        assert other == grpc.StatusCode.UNAUTHENTICATED  # "any other uuid", as the header says
        check_vms(address, table, session)
        shown = [row[0] for row in table["VMs"]]
        # every VM of the demo data, and the NOT_FOUND example
        assert shown == [*zstack_sim.demo_data().vms, zstack_sim.DEMO_MISSING_VM_UUID]
    finally:
        proc.terminate()
        proc.wait(10)
    [[name, password, _]] = table["accounts"]
    [[key_id, secret, _]] = table["access keys"]
    # The printed account and AccessKey work in the modes that use them.
    modes = [
        (["--auth-mode", "account", "--zstack-account", name], {"ZSTACK_PASSWORD": password}),
        (
            ["--auth-mode", "access-key", "--zstack-access-key-id", key_id],
            {"ZSTACK_ACCESS_KEY_SECRET": secret},
        ),
    ]
    for flags, env in modes:
        proc, address = gateway(*flags, env=env)
        try:
            list(demo_output(proc))
            code, names = call(address, zstack_sim.DEMO_VM_UUID)
            assert code == grpc.StatusCode.OK and len(names) == 5, (flags, code)
        finally:
            proc.terminate()
            proc.wait(10)


def test_print_table_prints_what_the_demo_prints():
    printed = subprocess.run(
        [str(BIN / "zstack-sim"), "--print-table"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    proc, _ = gateway()
    try:
        lines = list(demo_output(proc))
    finally:
        proc.terminate()
        proc.wait(10)
    start = lines.index("the data (zstack-sim --print-table prints it alone):") + 1
    assert printed[: len(lines) - start] == lines[start:]
    assert parse(printed)["about the VMs"]  # the notes follow the VM rows


def test_help_points_to_the_table():
    sim_help = subprocess.run(
        [str(BIN / "zstack-sim"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--print-table" in sim_help
    gateway_help = subprocess.run(
        [str(BIN / "zstack-gateway"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "zstack-sim --print-table" in gateway_help


def test_a_vm_added_to_the_data_shows_in_the_table(tmp_path: Path):
    """A data file with one more VM (and a note) and an expired session: the simulator's start-up
    table lists them, and a gateway in front of it answers as the rows say."""
    doc = zstack_sim.demo_data().to_json(resolve_tz("Asia/Shanghai"))
    image = doc["images"][1]["uuid"]
    doc["vms"].append(
        {"uuid": "0123456789abcdef0123456789abcdef", "name": "added-vm", "state": "Stopped",
         "note": "added by a test", "candidates": [image, doc["images"][2]["uuid"]]}
    )  # fmt: skip
    doc["sessions"].append(
        {"uuid": "fedcba9876543210fedcba9876543210", "accountUuid": zstack_sim.DEMO_ACCOUNT_UUID,
         "createDate": "2024-05-01T09:00:00+08:00", "expiredDate": "2024-05-01T10:00:00+08:00"}
    )  # fmt: skip
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(doc))
    with start_simulator(tmp_path, "--data", str(data_file)) as sim:
        lines = sim.output().splitlines()
        assert lines[1] == "the data (zstack-sim --print-table prints it alone):"
        table = parse(lines)
        assert ["0123456789abcdef0123456789abcdef", "added by a test"] in table["about the VMs"]
        added = [row for row in table["VMs"] if row[0] == "0123456789abcdef0123456789abcdef"]
        assert added and added[0][3].startswith("2 images: ")
        states = {row[0]: row[2] for row in table["sessions"]}
        assert states["fedcba9876543210fedcba9876543210"].startswith("expired")
        with start_gateway(tmp_path, sim.address, env=CLEAN_ENV, drop_env=()) as gw:
            check_sessions(gw.address, table, zstack_sim.DEMO_VM_UUID)
            check_vms(gw.address, table, zstack_sim.DEMO_SESSION_UUID)


def test_the_isos_and_cd_roms_are_what_the_gateway_answers():
    """The ISO rows name the VMs GetCandidateVm lists; the CD-ROM rows what a VM's inventory holds,
    also after AttachIso fills one (the table printed by a simulator whose VM holds an ISO)."""
    printed = subprocess.run(
        [str(BIN / "zstack-sim"), "--print-table"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    table = parse(printed)
    names = {uuid: name for uuid, name, *_ in table["VMs"]}
    assert table["ISOs"] and all(shows == "1 CD-ROM empty" for _, shows in table["CD-ROMs"])
    auth = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)
    proc, address = gateway()
    try:
        list(demo_output(proc))
        with grpc.insecure_channel(address) as channel:
            images = img_svc_grpc.ImageServiceStub(channel)
            for iso, _name, listed in table["ISOs"]:
                request = img_svc.GetCandidateVmRequest(iso_uuid=iso)
                vms = [
                    vm.uuid
                    for r in images.GetCandidateVm(request, metadata=auth, timeout=15)
                    for vm in r.inventories
                ]
                count, _, shown = listed.partition(": ")
                assert count == f"{len(vms)} VM" + ("s" if len(vms) != 1 else ""), (iso, listed)
                assert shown.split(", ") == [names[vm] for vm in vms], (iso, listed)
            iso, iso_name, _ = table["ISOs"][0]
            vm = svc_grpc.VmInstanceServiceStub(channel).AttachIso(
                svc.AttachIsoRequest(vm_instance_uuid=zstack_sim.DEMO_STOPPED_VM_UUID, iso_uuid=iso),
                metadata=auth,
                timeout=15,
            )
            assert [cd.iso_uuid for cd in vm.inventory.vm_cd_roms] == [iso]
    finally:
        proc.terminate()
        proc.wait(10)
    data = zstack_sim.demo_data()
    data.vms[zstack_sim.DEMO_STOPPED_VM_UUID].drives[0].iso_uuid = iso
    after = parse(render(data, resolve_tz("Asia/Shanghai")).splitlines())
    assert [zstack_sim.DEMO_STOPPED_VM_UUID, f"CD-ROM 0 holds {iso_name}"] in after["CD-ROMs"]
