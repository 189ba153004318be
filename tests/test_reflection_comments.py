"""Server reflection serves the protos with their comments, the schema it serves is the one compiled
in, and health and reflection still resolve.

The gateway loads ``server/zstack_gateway/descriptors.binpb`` (protoc's FileDescriptorSet of protos/
with source info, from ``make gen``) and hands grpc_reflection a pool that serves each file with the
comments of its copy in that set.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import SESSION
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection
from harness import GatewayThread
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack_gateway import descriptors

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
GRPCURL = Path(sys.executable).with_name("grpcurl")
IMAGE_PROTO = PROTOS / "zstack" / "v1" / "image.proto"


def grpcurl(target: str, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *flags, target, *args], capture_output=True, text=True, timeout=30
    )


def comment_above(proto: Path, declaration: str) -> str:
    """The last line of the comment right above the line of ``proto`` that holds ``declaration``."""
    lines = proto.read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if declaration in line]
    above = lines[index - 1].strip()
    assert above.startswith("//"), (declaration, above)
    return above


def test_grpcurl_describe_shows_the_field_comments_of_image_proto(gateway: GatewayThread) -> None:
    for message, fields in (
        ("zstack.v1.ImageInventory", ("optional int64 size = 6;", "create_date = 18")),
        ("zstack.v1.BackupStorageRef", ("optional int64 id = 1;",)),
    ):
        out = grpcurl(gateway.target, "describe", message)
        assert out.returncode == 0, out.stderr
        assert f"{message} is a message:" in out.stdout
        for field in fields:
            comment = comment_above(IMAGE_PROTO, field)
            assert comment in out.stdout, (comment, out.stdout)
    out = grpcurl(gateway.target, "describe", "zstack.v1.ImageInventory")
    assert "// ImageInventory mirrors ZStack's `org.zstack.header.image.ImageInventory`" in out.stdout


def test_grpcurl_describe_shows_service_and_method_comments(gateway: GatewayThread) -> None:
    out = grpcurl(gateway.target, "describe", "zstack.v1.VmInstanceService")
    assert out.returncode == 0, out.stderr
    assert "// VmInstanceService fronts ZStack's VM instance APIs." in out.stdout
    assert "rpc GetCandidateIso ( .zstack.v1.GetCandidateIsoRequest ) returns ( stream" in out.stdout
    out = grpcurl(gateway.target, "describe", "zstack.v1.ErrorCode")
    assert out.returncode == 0, out.stderr
    assert "//" in out.stdout and "global_error_code" in out.stdout


def test_list_health_reflection_and_a_call_still_work(gateway: GatewayThread, sim: object) -> None:
    out = grpcurl(gateway.target, "list")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "zstack.v1.ImageService",
        "zstack.v1.VmInstanceService",
    ]
    for symbol in ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        out = grpcurl(gateway.target, "describe", symbol)
        assert out.returncode == 0, out.stderr
        assert f"{symbol} is a service:" in out.stdout
    out = grpcurl(gateway.target, "grpc.health.v1.Health/Check", flags=("-d", "{}"))
    assert out.returncode == 0, out.stderr
    assert '"status": "SERVING"' in out.stdout
    out = grpcurl(
        gateway.target,
        "zstack.v1.VmInstanceService/GetCandidateIso",
        flags=(
            "-H",
            f"authorization: OAuth {SESSION}",
            "-d",
            json.dumps({"vmInstanceUuid": zstack_sim.DEMO_VM_UUID}),
        ),
    )
    assert out.returncode == 0, out.stderr
    assert "TinyLinux" in out.stdout


def test_the_shipped_descriptor_set_matches_the_compiled_in_stubs() -> None:
    pool = descriptors.SourceInfoPool(descriptors.load_descriptor_set())
    assert pool.stale == []
    assert {"zstack/v1/image.proto", "zstack/v1/error.proto", "zstack/v1/vm_instance_service.proto"} <= set(
        pool.with_source
    )


def build_descriptor_set(protos: Path, out: Path) -> bytes:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(p) for p in sorted((protos / "zstack" / "v1").glob("*.proto"))),
        ],
        check=True,
        timeout=60,
    )
    return out.read_bytes()


@pytest.fixture
def stale_set(tmp_path: Path) -> bytes:
    """A descriptor set of protos/ where image.proto has one field more than the compiled-in stubs."""
    protos = tmp_path / "protos"
    (protos / "zstack" / "v1").mkdir(parents=True)
    for proto in (PROTOS / "zstack" / "v1").glob("*.proto"):
        (protos / "zstack" / "v1" / proto.name).write_text(proto.read_text())
    image = protos / "zstack" / "v1" / "image.proto"
    text = image.read_text()
    image.write_text(
        text.replace(
            "  optional string uuid = 1;\n",
            "  optional string uuid = 1;\n"
            "  // A field the server does not have.\n"
            "  optional string extra = 99;\n",
            1,
        )
    )
    return build_descriptor_set(protos, tmp_path / "stale.binpb")


@pytest.fixture
def reflection_server() -> Iterator[tuple[grpc.Server, int]]:
    """A bare grpc server (no services but reflection), for a pool of the test's choosing."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    yield server, port
    server.stop(0)


def test_a_stale_descriptor_set_serves_the_compiled_in_schema_without_its_comments(
    stale_set: bytes, reflection_server: tuple[grpc.Server, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zstack_gateway.reflection"):
        pool = descriptors.reflection_pool(stale_set)
    assert pool is not None
    [warning] = [r for r in caplog.records if r.name == "zstack_gateway.reflection"]
    assert "zstack/v1/image.proto" in warning.getMessage()
    assert "make gen" in warning.getMessage()
    server, port = reflection_server
    names = (svc.DESCRIPTOR.services_by_name["VmInstanceService"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=pool)
    server.start()
    target = f"127.0.0.1:{port}"
    out = grpcurl(target, "describe", "zstack.v1.ImageInventory")
    assert out.returncode == 0, out.stderr
    assert "extra" not in out.stdout  # the served schema, not the set's
    assert "//" not in out.stdout  # and no comments from a file that does not match it
    assert "optional int64 size = 6;" in out.stdout
    # The files of the set that do match keep their comments.
    out = grpcurl(target, "describe", "zstack.v1.VmInstanceService")
    assert "// VmInstanceService fronts ZStack's VM instance APIs." in out.stdout


def test_an_unreadable_descriptor_set_leaves_reflection_without_comments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="zstack_gateway.reflection"):
        assert descriptors.reflection_pool(b"\xff\xff\xff") is None
    assert any("cannot read the descriptor set" in r.getMessage() for r in caplog.records)


def test_the_wheel_ships_the_descriptor_set(tmp_path: Path) -> None:
    """A non-editable install (the container image's) has the descriptor set beside the module. The
    wheel is built from a copy of what deploy/Dockerfile copies, so no earlier build output counts."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "requirements.lock", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("server", "client"):
        shutil.copytree(
            ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "zstack_gateway/descriptors.binpb" in archive.namelist()
        shipped = archive.read("zstack_gateway/descriptors.binpb")
    assert shipped == (ROOT / "server" / "zstack_gateway" / descriptors.DESCRIPTOR_SET).read_bytes()
    parsed = descriptor_pb2.FileDescriptorSet.FromString(shipped)
    image = next(f for f in parsed.file if f.name == "zstack/v1/image.proto")
    assert image.source_code_info.location, "the set lost its source info"


def test_health_file_is_served_as_compiled_in() -> None:
    """Files outside the set (health, reflection) come from the compiled-in descriptors."""
    pool = descriptors.SourceInfoPool(descriptors.load_descriptor_set())
    proto = descriptor_pb2.FileDescriptorProto()
    pool.FindFileContainingSymbol("grpc.health.v1.Health").CopyToProto(proto)
    assert proto.name == health_pb2.DESCRIPTOR.name
    assert [s.name for s in proto.service] == ["Health"]
