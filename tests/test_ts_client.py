"""The TypeScript client (client-ts/, @zstack-gateway/client) and its example (tests/node/candidates.mts).

tsc compiles the package and the example as a newcomer would (`npm run build:ts`), strictly; the
example then calls the gateway over Connect's gRPC transport. What it sees must equal what a Python
caller sees: the same images in the proto3 JSON form, int64 fields exact (a `bigint`, turned into a
`number` only when that is exact), Timestamps as the same instants, and ZStack's ErrorCode decoded
from the status details.
"""

from __future__ import annotations

import json
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
from harness import GatewayThread
from zstack.v1 import image_pb2, vm_instance_service_pb2
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")
NPM = shutil.which("npm")
TSC = ROOT / "node_modules" / ".bin" / "tsc"
EXAMPLE = ROOT / "build" / "node" / "candidates.mjs"

pytestmark = [
    pytest.mark.skipif(NODE is None or NPM is None, reason="node and npm are not installed"),
    pytest.mark.skipif(not TSC.exists(), reason="typescript is installed by `make node`"),
]


@pytest.fixture(scope="module")
def example() -> Path:
    """The example, compiled with the package by the command the README gives."""
    assert NPM is not None
    out = subprocess.run(
        [NPM, "run", "--silent", "build:ts"], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert EXAMPLE.exists()
    return EXAMPLE


def run_ts(example: Path, target: str, vm_uuid: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(example), target, vm_uuid, "--session", SESSION, "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def python_images(target: str, vm_uuid: str) -> list[image_pb2.ImageInventory]:
    with grpc.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        request = vm_instance_service_pb2.GetCandidateIsoRequest(vm_instance_uuid=vm_uuid)
        return [
            image
            for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=10)
            for image in chunk.inventories
        ]


def iso_ms(image: image_pb2.ImageInventory) -> str:
    """The image's createDate as JavaScript's Date.toISOString() writes it, or "" when unset."""
    if not image.HasField("create_date"):
        return ""
    when = image.create_date.ToDatetime(tzinfo=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{round(image.create_date.nanos / 1e6):03d}Z"


def ts_error(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    report: dict[str, Any] = json.loads(out.stderr.strip().splitlines()[-1])
    return report


@pytest.fixture
def target(gateway: GatewayThread, sim: SimControl) -> str:
    return gateway.target


def test_ts_streams_the_same_images_as_python(example: Path, target: str) -> None:
    out = run_ts(example, target, zstack_sim.DEMO_VM_UUID, "--json")
    assert out.returncode == 0, out.stderr
    messages = [json.loads(line) for line in out.stdout.splitlines()]
    images = [image for message in messages for image in message.get("inventories", [])]
    assert "TinyLinux" in [image["name"] for image in images]
    # int64 as strings and RFC 3339 dates: the proto3 JSON form, as Python prints it.
    expected = [json_format.MessageToDict(i) for i in python_images(target, zstack_sim.DEMO_VM_UUID)]
    assert images == expected


def test_ts_prints_int64_exactly_and_timestamps_as_dates(example: Path, target: str) -> None:
    out = run_ts(example, target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    images = python_images(target, zstack_sim.DEMO_VM_UUID)
    assert [[r[0], r[1], r[2], r[4]] for r in rows] == [
        [i.uuid, i.name, str(i.size) if i.HasField("size") else "", iso_ms(i)] for i in images
    ]
    for row, image in zip(rows, images, strict=True):
        if image.HasField("size"):  # bigint -> number for arithmetic: GiB to 2 decimals
            assert abs(float(row[3]) - image.size / 2**30) <= 0.005
        else:
            assert row[3] == ""
    # The demo has images with and without sizes and dates, and sizes beyond 2^32.
    assert any(row[2] == "" for row in rows) and any(row[4] == "" for row in rows)
    assert any(row[2] and int(row[2]) > 2**32 for row in rows)


def test_ts_package_helpers_pass_their_node_tests(example: Path) -> None:
    assert NODE is not None
    out = subprocess.run(
        [NODE, "--test", str(example.parent)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout
    assert "# pass 3" in out.stdout


def test_ts_decodes_not_found_with_zstack_error_code(example: Path, target: str) -> None:
    report = ts_error(run_ts(example, target, zstack_sim.DEMO_MISSING_VM_UUID))
    assert report["code"] == "NotFound"
    assert report["message"].startswith("ZStack SYS.1003: ")
    assert report["zstack"]["code"] == "SYS.1003"
    assert "not found" in report["zstack"]["details"]


def test_ts_reports_an_unreachable_gateway_without_zstack_details(example: Path) -> None:
    report = ts_error(run_ts(example, f"127.0.0.1:{free_port()}", zstack_sim.DEMO_VM_UUID))
    assert report["code"] == "Unavailable"
    assert "zstack" not in report


def test_ts_keeps_int64_beyond_2_to_53_exact(example: Path, beyond_double_target: str) -> None:
    out = run_ts(example, beyond_double_target, zstack_sim.DEMO_VM_UUID, "--json")
    assert out.returncode == 0, out.stderr
    images = [i for line in out.stdout.splitlines() for i in json.loads(line).get("inventories", [])]
    assert str(BEYOND_DOUBLE) in [i.get("size") for i in images]
    # The bigint's digits, not the nearest double's (9007199254740992).
    out = run_ts(example, beyond_double_target, zstack_sim.DEMO_VM_UUID)
    assert out.returncode == 0, out.stderr
    [row] = [line.split("\t") for line in out.stdout.splitlines() if "CentOS-7" in line]
    assert row[2] == str(BEYOND_DOUBLE)
    assert row[3] == f"{BEYOND_DOUBLE / 2**30:.2f}"


def test_docs_typescript_example_compiles_and_runs(example: Path, target: str, tmp_path: Path) -> None:
    """docs/clients.md's TypeScript snippet, compiled strictly against the package and run as printed
    (its target and VM swapped for the test's)."""
    text = (ROOT / "docs" / "clients.md").read_text()
    section = text[text.index("**TypeScript**") :]
    code = section[
        section.index("```ts\n") + len("```ts\n") : section.index("\n```\n", section.index("```ts\n"))
    ]
    assert code.count('"127.0.0.1:50051"') == 1
    work = ROOT / "build" / "readme-ts"  # under the checkout, so that node_modules resolves
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "readme.mts").write_text(code.replace('"127.0.0.1:50051"', f'"{target}"'))
    (work / "tsconfig.json").write_text(
        json.dumps(
            {
                "extends": "../../client-ts/tsconfig.json",
                "compilerOptions": {
                    "declaration": False,
                    "sourceMap": False,
                    "rootDir": ".",
                    "outDir": "out",
                },
                "include": ["readme.mts"],
            }
        )
    )
    out = subprocess.run([str(TSC), "-p", str(work)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(work / "out" / "readme.mjs")], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    images = python_images(target, zstack_sim.DEMO_VM_UUID)
    assert len(out.stdout.splitlines()) == len(images)
    centos = next(i for i in images if i.name.startswith("CentOS-7"))
    assert f"{centos.name} {centos.size} {iso_ms(centos)}" in out.stdout.splitlines()
    shutil.rmtree(work, ignore_errors=True)
