"""A Node.js service calling the gateway (tests/node/client.js, @grpc/grpc-js + proto-loader), and
the README's Node example.

What a JavaScript caller sees must equal what a Python caller sees: the same images in the same
proto3 JSON form, and on failure the same google.rpc.Status, decoded by Node from the
``grpc-status-details-bin`` trailer (the ZStack ErrorCode, ErrorInfo and BadRequest details). The
README's example, with the same proto-loader options, gives int64 exactly and Timestamps as Dates.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstack_sim
from conftest import AUTH, BEYOND_DOUBLE, SESSION
from google.protobuf import json_format
from grpc_status import rpc_status
from harness import GatewayThread
from zstack.v1 import error_pb2, vm_instance_service_pb2
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "node" / "client.js"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="@grpc/grpc-js is installed by `make node`",
    ),
]


def run_node(target: str, vm_uuid: str, *, session: str = SESSION) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(CLIENT), target, vm_uuid, "--session", session, "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def python_images(target: str, vm_uuid: str) -> list[dict[str, Any]]:
    with grpc.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        request = vm_instance_service_pb2.GetCandidateIsoRequest(vm_instance_uuid=vm_uuid)
        return [
            json_format.MessageToDict(image)
            for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=10)
            for image in chunk.inventories
        ]


def python_status(target: str, vm_uuid: str) -> dict[str, Any]:
    """The google.rpc.Status of a failing call, as Python decodes it, in proto3 JSON form."""
    with grpc.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        request = vm_instance_service_pb2.GetCandidateIsoRequest(vm_instance_uuid=vm_uuid)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.GetCandidateIso(request, metadata=AUTH, timeout=10))
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    return json_format.MessageToDict(status)


def node_status(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stdout == ""
    status: dict[str, Any] = json.loads(out.stderr.strip().splitlines()[-1])
    return status


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The status without what differs between two calls: Node's codeName and ZStack's ``cost`` (its
    time taken)."""
    details = [{k: v for k, v in d.items() if k != "cost"} for d in status.get("details", [])]
    return {**{k: v for k, v in status.items() if k != "codeName"}, "details": details}


def details_of(status: dict[str, Any], type_name: str) -> list[dict[str, Any]]:
    url = f"type.googleapis.com/{type_name}"
    return [d for d in status.get("details", []) if d["@type"] == url]


@pytest.fixture
def target(gateway: GatewayThread, sim: SimControl) -> str:
    return gateway.target


def test_node_streams_the_same_images_as_python(target: str) -> None:
    out = run_node(target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    messages = [json.loads(line) for line in out.stdout.splitlines()]
    assert messages, "no stream message printed"
    images = [image for message in messages for image in message.get("inventories", [])]
    assert "TinyLinux" in [image["name"] for image in images]
    # ZStack's keys, int64 as strings and RFC 3339 dates: the proto3 JSON form, as Python prints it.
    assert "backupStorageRefs" in images[0]
    assert images == python_images(target, zstack_sim.DEMO_VM_UUID)


def test_node_decodes_not_found_with_zstack_error_code(target: str) -> None:
    status = node_status(run_node(target, zstack_sim.DEMO_MISSING_VM_UUID))
    assert status["codeName"] == "NOT_FOUND"
    assert status["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "ZStack SYS.1003" in status["message"]
    [error_code] = details_of(status, "zstack.v1.ErrorCode")
    assert error_code["code"] == "SYS.1003"
    assert "not found" in error_code["details"]
    [info] = details_of(status, "google.rpc.ErrorInfo")
    assert info["reason"] == "ZSTACK_SYS_1003"
    assert info["metadata"]["zstackCode"] == "SYS.1003"
    # Field by field what Python decodes from the same kind of trailer.
    assert comparable(status) == comparable(python_status(target, zstack_sim.DEMO_MISSING_VM_UUID))
    # And the ErrorCode reads back into the Python message unchanged.
    fields = {k: v for k, v in error_code.items() if k != "@type"}
    assert json_format.ParseDict(fields, error_pb2.ErrorCode()).code == "SYS.1003"


def test_node_decodes_a_bad_request(target: str) -> None:
    status = node_status(run_node(target, "not-a-uuid"))
    assert status["codeName"] == "INVALID_ARGUMENT"
    [bad_request] = details_of(status, "google.rpc.BadRequest")
    assert bad_request["fieldViolations"][0]["field"] == "vm_instance_uuid"
    assert comparable(status) == comparable(python_status(target, "not-a-uuid"))


def test_node_reports_an_unreachable_gateway_without_details() -> None:
    status = node_status(run_node(f"127.0.0.1:{free_port()}", zstack_sim.DEMO_VM_UUID))
    assert status["codeName"] == "UNAVAILABLE"
    assert "details" not in status


# The README's Node example ("From Node.js"), run as printed from the checkout with `node -`.

README = ROOT / "README.md"
LOADER_KEYS = ("keepCase", "longs", "enums", "defaults", "oneofs")


def readme_node_example() -> str:
    text = README.read_text()
    section = text[text.index("### From Node.js") :]
    return section[section.index("```js\n") + len("```js\n") : section.index("\n```\n")]


def loader_options(source: str) -> dict[str, str]:
    """The proto-loader options written in ``source`` (key: value, comments dropped)."""
    found = {}
    for key in LOADER_KEYS:
        [value] = re.findall(rf"^\s*{key}: ([^,]+),", source, flags=re.MULTILINE)
        found[key] = value
    return found


def run_readme_example(target: str, vm_uuid: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    code = readme_node_example()
    assert code.count("'127.0.0.1:50051'") == 1 and code.count(f"'{zstack_sim.DEMO_VM_UUID}'") == 1
    code = code.replace("'127.0.0.1:50051'", f"'{target}'").replace(zstack_sim.DEMO_VM_UUID, vm_uuid)
    return subprocess.run([NODE, "-"], input=code, capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_client_js_uses_the_readme_proto_loader_options() -> None:
    options = loader_options(readme_node_example())
    assert options == {
        "keepCase": "false",
        "longs": "String",
        "enums": "String",
        "defaults": "true",
        "oneofs": "false",
    }
    assert loader_options(CLIENT.read_text()) == options


def test_readme_node_example_prints_exact_sizes_and_dates(target: str) -> None:
    out = run_readme_example(target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    with grpc.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        request = vm_instance_service_pb2.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID)
        images = [
            i for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=10) for i in chunk.inventories
        ]
    assert len(rows) == len(images)
    for row, image in zip(rows, images, strict=True):
        name, size, gib, created = row
        assert name == image.name
        if image.HasField("size"):
            assert size == str(image.size)
            assert abs(float(gib) - image.size / 2**30) <= 0.005
        else:
            assert (size, gib) == ("-", "-")
        if image.HasField("create_date"):
            when = image.create_date.ToDatetime(tzinfo=UTC)
            assert created == when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{image.create_date.nanos // 10**6:03d}Z"
        else:
            assert created == "-"
    assert any(r[1] == "-" for r in rows) and any(r[3] == "-" for r in rows)


def test_readme_node_example_reports_not_found(target: str) -> None:
    out = run_readme_example(target, zstack_sim.DEMO_MISSING_VM_UUID)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("NOT_FOUND ZStack SYS.1003: invalid field[vmInstanceUuid]")


def test_longs_string_keeps_int64_beyond_2_to_53_exact(beyond_double_target: str) -> None:
    out = run_readme_example(beyond_double_target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    [row] = [line.split("\t") for line in out.stdout.splitlines() if line.startswith("CentOS-7")]
    assert row[1] == str(BEYOND_DOUBLE)  # not 9007199254740992, as longs: Number would give
    # And client.js prints it exactly too, as Python's json_format does.
    node = run_node(beyond_double_target, zstack_sim.DEMO_VM_UUID)
    assert node.returncode == 0, node.stderr
    images = [i for line in node.stdout.splitlines() for i in json.loads(line).get("inventories", [])]
    assert str(BEYOND_DOUBLE) in [i.get("size") for i in images]


def test_node_attaches_an_iso_and_reads_the_job_uuid(target: str, sim: SimControl) -> None:
    assert NODE is not None
    iso, vm = zstack_sim.DEMO_ISO_UUID, zstack_sim.DEMO_STOPPED_VM_UUID
    command = [NODE, str(CLIENT), target, vm, "--session", SESSION, "--timeout", "10", "--attach", iso]
    out = subprocess.run(
        [*command, "--request-id", "node-1"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    [job] = sim.accepted_jobs()
    assert result["jobUuid"] == job
    inventory = result["response"]["inventory"]
    assert inventory["uuid"] == vm and inventory["vmCdRoms"][0]["isoUuid"] == iso
    assert isinstance(inventory["memorySize"], str)  # int64 as an exact decimal string
    # The same request id: the first job's result, no second attach.
    again = subprocess.run(
        [*command, "--request-id", "node-1"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert json.loads(again.stdout) == result and sim.accepted_jobs() == [job]
    # A new attach of the same ISO: ZStack refuses it, and the status names the job.
    status = node_status(subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT))
    assert status["codeName"] == "FAILED_PRECONDITION"
    [info] = details_of(status, "google.rpc.ErrorInfo")
    assert info["metadata"]["zstackCode"] == "SYS.1006"
    assert info["metadata"]["jobUuid"] == status["jobUuid"] == sim.accepted_jobs()[-1]
