"""The zstack_iso client library and the zstack-iso command, against the real gateway and simulator.

A few tests use a small in-process gRPC server instead, for what the gateway never does on purpose:
fail in the middle of a stream, or send a status trailer that cannot be read.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import SESSION
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from harness import GatewayThread
from zstack.v1 import error_pb2, image_pb2, vm_instance_service_pb2, vm_instance_service_pb2_grpc
from zstack_iso import AsyncIsoClient, ImageInventory, IsoClient, ZStackError
from zstack_iso.cli import human_size
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port

SEED_UUID = "cb2c34a46a753c5ab95807fabbae56af"
BAD_UUID = "not-a-uuid"
CLI = Path(sys.executable).with_name("zstack-iso")


@pytest.fixture
def target(gateway: GatewayThread, sim: SimControl) -> str:
    """The gateway's address, with the simulator reset to its demo data."""
    return gateway.target


@pytest.fixture
def client(target: str) -> Iterator[IsoClient]:
    with IsoClient(target, session=SESSION, timeout=10) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# IsoClient against the gateway


def test_iter_candidates_yields_images_and_list_candidates_matches(client: IsoClient) -> None:
    images = client.iter_candidates(zstack_sim.DEMO_VM_UUID)
    first = next(images)
    assert isinstance(first, ImageInventory)
    streamed = [first, *images]
    listed = client.list_candidates(zstack_sim.DEMO_VM_UUID)
    assert [i.uuid for i in streamed] == [i.uuid for i in listed]
    # The demo VM's list spans more than one chunk: flattening keeps every image, in order, once.
    assert len({i.uuid for i in listed}) == len(listed) > 1
    seed = next(i for i in listed if i.uuid == SEED_UUID)
    assert seed.name == "TinyLinux"
    assert seed.backup_storage_refs[0].image_uuid == SEED_UUID


def test_not_found_carries_zstack_error(client: IsoClient) -> None:
    with pytest.raises(ZStackError) as info:
        client.list_candidates(zstack_sim.DEMO_MISSING_VM_UUID)
    err = info.value
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.error_code is not None and err.error_code.code == "SYS.1003"
    assert err.zstack_code == "SYS.1003"
    assert err.http_status == 503
    assert err.reason == "ZSTACK_SYS_1003"
    assert err.metadata["zstackCode"] == "SYS.1003"
    assert err.field_violations == []
    assert str(err).startswith("NOT_FOUND: ZStack SYS.1003: ")
    assert str(err) == f"NOT_FOUND: {err.message}"
    assert zstack_sim.DEMO_MISSING_VM_UUID in err.message


def test_invalid_uuid_names_the_field(client: IsoClient) -> None:
    with pytest.raises(ZStackError) as info:
        list(client.iter_candidates(BAD_UUID))
    err = info.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in err.field_violations] == ["vm_instance_uuid"]
    assert BAD_UUID in err.field_violations[0][1]
    # Not ZStack's error: the gateway describes it with a code of its own.
    assert err.zstack_code is not None and err.zstack_code.startswith("GATEWAY.")
    assert err.http_status is None


def test_no_session_is_unauthenticated(target: str) -> None:
    with IsoClient(target) as anonymous, pytest.raises(ZStackError) as info:
        anonymous.list_candidates(zstack_sim.DEMO_VM_UUID)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert info.value.reason is not None


def test_closed_port_is_unavailable_as_zstack_error() -> None:
    closed = IsoClient(f"127.0.0.1:{free_port()}", session=SESSION, timeout=5)
    with closed, pytest.raises(ZStackError) as info:
        closed.list_candidates(zstack_sim.DEMO_VM_UUID)
    err = info.value
    assert not isinstance(err, grpc.RpcError)
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert err.error_code is None and err.zstack_code is None and err.metadata == {}
    assert SESSION not in str(err) and SESSION not in repr(err)


def test_closed_client_and_bad_arguments() -> None:
    c = IsoClient("127.0.0.1:1", session=SESSION)
    assert SESSION not in repr(c)
    c.close()
    c.close()
    with pytest.raises(ZStackError) as info:
        c.list_candidates(zstack_sim.DEMO_VM_UUID)
    assert info.value.code is grpc.StatusCode.CANCELLED
    with pytest.raises(TypeError):
        c.iter_candidates(zstack_sim.DEMO_VM_UUID, system_tags="one-tag")
    with pytest.raises(ValueError) as bad:
        IsoClient("127.0.0.1:1", session=SESSION + "\n")
    assert SESSION not in str(bad.value)


# ---------------------------------------------------------------------------------------------
# AsyncIsoClient against the gateway


def test_async_client_happy_path_and_error(target: str) -> None:
    async def main() -> tuple[list[str], list[str], ZStackError]:
        async with AsyncIsoClient(target, session=SESSION, timeout=10) as c:
            streamed = [image.uuid async for image in c.iter_candidates(zstack_sim.DEMO_VM_UUID)]
            listed = [image.uuid for image in await c.list_candidates(zstack_sim.DEMO_VM_UUID)]
            try:
                await c.list_candidates(zstack_sim.DEMO_MISSING_VM_UUID)
            except ZStackError as err:
                return streamed, listed, err
            raise AssertionError("no error for a missing VM")

    streamed, listed, err = asyncio.run(main())
    assert SEED_UUID in streamed
    assert streamed == listed
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.zstack_code == "SYS.1003"
    assert err.http_status == 503


# ---------------------------------------------------------------------------------------------
# Failures the gateway does not produce on demand, from a small in-process server


def _status(code: grpc.StatusCode, message: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="TEST_REASON", domain="test", metadata={"httpStatus": "x"}))
    ec = any_pb2.Any()
    ec.Pack(error_pb2.ErrorCode(code="SYS.1012", details="gone"))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[ec, info]))


class _Faulty(vm_instance_service_pb2_grpc.VmInstanceServiceServicer):
    """Behaves as the VM UUID in the request says."""

    def GetCandidateIso(self, request, context):  # type: ignore[no-untyped-def]
        image = image_pb2.ImageInventory
        if request.vm_instance_uuid == "midstream":
            yield vm_instance_service_pb2.GetCandidateIsoResponse(
                inventories=[image(uuid="a"), image(uuid="b")]
            )
            yield vm_instance_service_pb2.GetCandidateIsoResponse(inventories=[image(uuid="c")])
            context.abort_with_status(_status(grpc.StatusCode.UNAVAILABLE, "lost it"))
        elif request.vm_instance_uuid == "garbage":
            context.set_trailing_metadata((("grpc-status-details-bin", b"\xff\x00not a status"),))
            context.abort(grpc.StatusCode.INTERNAL, "unreadable details")
        elif request.vm_instance_uuid == "mismatch":
            # A well-formed status whose code disagrees with the call's: not to be trusted.
            status = _status(grpc.StatusCode.NOT_FOUND, "other message")
            context.set_trailing_metadata(status.trailing_metadata)
            context.abort(grpc.StatusCode.INTERNAL, "mismatched details")


@pytest.fixture(scope="module")
def faulty_target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    vm_instance_service_pb2_grpc.add_VmInstanceServiceServicer_to_server(_Faulty(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_error_in_the_middle_of_the_stream(faulty_target: str) -> None:
    seen: list[str] = []
    with IsoClient(faulty_target, timeout=5) as c, pytest.raises(ZStackError) as info:
        for image in c.iter_candidates("midstream"):
            seen.append(image.uuid)
    assert seen == ["a", "b", "c"]
    err = info.value
    assert (err.code, err.message) == (grpc.StatusCode.UNAVAILABLE, "lost it")
    assert err.zstack_code == "SYS.1012" and err.reason == "TEST_REASON" and err.domain == "test"
    assert err.http_status is None  # "x" is not a number

    async def main() -> list[str]:
        got: list[str] = []
        async with AsyncIsoClient(faulty_target, timeout=5) as ac:
            with pytest.raises(ZStackError) as ainfo:
                async for image in ac.iter_candidates("midstream"):
                    got.append(image.uuid)
        assert ainfo.value.zstack_code == "SYS.1012"
        return got

    assert asyncio.run(main()) == ["a", "b", "c"]


@pytest.mark.parametrize("vm", ["garbage", "mismatch"])
def test_unreadable_details_leave_fields_unset(faulty_target: str, vm: str) -> None:
    with IsoClient(faulty_target, timeout=5) as c, pytest.raises(ZStackError) as info:
        c.list_candidates(vm)
    err = info.value
    assert err.code is grpc.StatusCode.INTERNAL
    assert err.error_code is None and err.zstack_code is None and err.reason is None
    assert err.field_violations == [] and err.metadata == {}


def test_from_rpc_error_never_raises() -> None:
    err = ZStackError.from_rpc_error(grpc.RpcError("no call attached"))
    assert err.code is grpc.StatusCode.UNKNOWN
    assert err.error_code is None


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(4_617_089_843) == "4.3 GiB"


# ---------------------------------------------------------------------------------------------
# The zstack-iso command, as a subprocess


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ZSTACK_ISO_") and k not in ("ZSTACK_SESSION", "ZSTACK_GATEWAY_TARGET")
    }
    done = subprocess.run(
        [str(CLI), *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )
    # Whatever happens, the session never shows.
    assert SESSION not in done.stdout and SESSION not in done.stderr
    return done


def test_cli_table(target: str) -> None:
    done = run_cli("candidates", zstack_sim.DEMO_VM_UUID, "--target", target, "--session", SESSION)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["UUID", "NAME", "FORMAT", "PLATFORM", "ARCH", "SIZE", "BACKUP", "STORAGES"]
    seed_row = next(line for line in lines if SEED_UUID in line)
    # The seed image has no architecture and no size; it has one backup storage.
    assert seed_row.split()[1:] == ["TinyLinux", "qcow2", "Linux", "-", "-", "1"]
    assert any("GiB" in line or "MiB" in line for line in lines[1:-1])
    assert lines[-1] == f"{len(lines) - 2} images"
    # Aligned: NAME starts at the same column on every row.
    name_at = lines[0].index("NAME")
    assert all(line[name_at - 2 : name_at] == "  " and line[name_at] != " " for line in lines[1:-1])


def test_cli_json_from_environment(target: str) -> None:
    env = {"ZSTACK_GATEWAY_TARGET": target, "ZSTACK_SESSION": SESSION}
    done = run_cli("candidates", zstack_sim.DEMO_VM_UUID, "--json", "--timeout", "10", env=env)
    assert done.returncode == 0, done.stderr
    images = json.loads(done.stdout)
    assert isinstance(images, list) and len(images) > 1
    seed = next(i for i in images if i["uuid"] == SEED_UUID)
    assert seed["name"] == "TinyLinux"
    assert seed["mediaType"] == "RootVolumeTemplate"
    assert seed["backupStorageRefs"][0]["imageUuid"] == SEED_UUID


def test_cli_not_found(target: str) -> None:
    done = run_cli("candidates", zstack_sim.DEMO_MISSING_VM_UUID, "--target", target, "--session", SESSION)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("zstack-iso: NOT_FOUND: ZStack SYS.1003: ")

    done = run_cli(
        "candidates", zstack_sim.DEMO_MISSING_VM_UUID, "--json", "--target", target, "--session", SESSION
    )
    assert done.returncode == 1
    first, _, rest = done.stderr.partition("\n")
    assert first.startswith("zstack-iso: NOT_FOUND: ZStack SYS.1003: ")
    error = json.loads(rest)["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["httpStatus"] == 503
    assert error["errorCode"]["code"] == "SYS.1003"


def test_cli_without_session_asks_the_gateway_and_says_how_to_give_one(target: str) -> None:
    # The session is optional (account and AccessKey gateways must not receive one); a pass-through
    # gateway refuses the call, and the one error line says how to send a session.
    done = run_cli("candidates", zstack_sim.DEMO_VM_UUID, "--target", target)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("zstack-iso: UNAUTHENTICATED: ")
    assert "ZSTACK_ISO_SESSION" in line
