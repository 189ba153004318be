"""Go and Java stubs from buf.gen.yaml's commented entries, as a user gets them: uncomment the
language's entries, `buf generate`, then compile what came out against that language's gRPC and
protobuf libraries.

The plugins are Debian's (protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc,
protobuf-compiler-grpc-java-plugin), the compilers and libraries too (golang-go with
golang-google-protobuf-dev and golang-google-grpc-dev; a JDK with libprotobuf-java and
libgrpc-java). .ci/run installs them; on a machine without them each test skips, naming what is
missing, unless REQUIRE_PROTOC_PLUGINS=1 (CI), where it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"
GOCODE = Path("/usr/share/gocode/src")
JAVA_LIBS = Path("/usr/share/java")
# geronimo-annotation: javax.annotation.Generated, which the grpc-java plugin writes and JDK 11+ lacks.
JAVA_JARS = (
    "protobuf",
    "grpc-api",
    "grpc-stub",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "guava",
    "jsr305",
    "geronimo-annotation-1.3-spec",
)
GO_MODULE = "example.com/zstackgw"


def require(missing: list[str]) -> None:
    if not missing:
        return
    message = "not installed: " + ", ".join(missing)
    if os.environ.get("REQUIRE_PROTOC_PLUGINS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def template(language: str) -> str:
    """buf.gen.yaml with the entries of ``language`` (the block whose comment starts with
    "# <language>:") uncommented, the way the file tells a user to."""
    blocks = (ROOT / "buf.gen.yaml").read_text().split("\n\n")
    [index] = [i for i, block in enumerate(blocks) if block.lstrip().startswith(f"# {language}:")]
    lines = blocks[index].splitlines()
    entries = [i for i, line in enumerate(lines) if re.match(r"  # - (local|protoc_builtin): ", line)]
    assert entries, f"no commented entries for {language}"
    # From the first entry on, every line is commented YAML: drop the "# ".
    for i in range(entries[0], len(lines)):
        assert lines[i].startswith("  # "), lines[i]
        lines[i] = "  " + lines[i][4:]
    blocks[index] = "\n".join(lines)
    return "\n\n".join(blocks)


def generate(language: str, tmp_path: Path, path: str, pattern: str) -> tuple[Path, list[str]]:
    """Runs `buf generate` with ``language`` uncommented into ``tmp_path/out``; PATH is ``path``.
    The directory of the generated zstack/v1 files, and the sorted names there that match
    ``pattern``."""
    config = tmp_path / "buf.gen.yaml"
    config.write_text(template(language))
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BUF), "generate", "--template", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PATH": path},
    )
    assert run.returncode == 0, run.stderr
    generated = out / "build" / "gen" / language.lower() / "zstack" / "v1"
    return generated, sorted(p.name for p in generated.glob(pattern))


def base_path() -> str:
    return f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def test_buf_gen_yaml_keeps_go_and_java_commented_out() -> None:
    text = (ROOT / "buf.gen.yaml").read_text()
    assert not re.search(r"^  - local: protoc-gen-go", text, flags=re.MULTILINE)
    assert not re.search(r"^  - protoc_builtin: java", text, flags=re.MULTILINE)
    assert re.search(r"^  - local: protoc-gen-es$", text, flags=re.MULTILINE)


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make node`")
def test_go_stubs_generate_and_compile(tmp_path: Path) -> None:
    require(
        [name for name in ("protoc-gen-go", "protoc-gen-go-grpc", "go") if shutil.which(name) is None]
        + [
            f"{GOCODE / module} (Debian's golang-google-{package}-dev)"
            for module, package in (
                ("google.golang.org/protobuf", "protobuf"),
                ("google.golang.org/grpc", "grpc"),
            )
            if not (GOCODE / module).is_dir()
        ]
    )
    generated, names = generate("Go", tmp_path, base_path(), "*.go")
    assert names == [
        "error.pb.go",
        "image.pb.go",
        "image_service.pb.go",
        "image_service_grpc.pb.go",
        "vm.pb.go",
        "vm_instance_service.pb.go",
        "vm_instance_service_grpc.pb.go",
    ]
    service = (generated / "vm_instance_service_grpc.pb.go").read_text()
    assert "GetCandidateIso(ctx context.Context, in *GetCandidateIsoRequest" in service
    # proto3 `optional` scalars are pointers, so that absent stays apart from 0.
    assert re.search(r"\bSize\s+\*int64\b", (generated / "image.pb.go").read_text())
    # The M options name the import path: compile the package there, against Debian's Go libraries.
    gopath = tmp_path / "gopath"
    package = gopath / "src" / GO_MODULE / "gen" / "zstack" / "v1"
    shutil.copytree(generated, package)
    build = subprocess.run(
        ["go", "vet", "."],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=package,
        env={
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{gopath}{os.pathsep}{GOCODE.parent}",
            "GOFLAGS": "",
        },
    )
    assert build.returncode == 0, build.stderr


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make node`")
def test_java_stubs_generate_and_compile(tmp_path: Path) -> None:
    plugin = shutil.which("protoc-gen-grpc-java") or shutil.which("grpc_java_plugin")
    require(
        [name for name in ("protoc", "javac") if shutil.which(name) is None]
        + ([] if plugin else ["protoc-gen-grpc-java (Debian's protobuf-compiler-grpc-java-plugin)"])
        + [f"{JAVA_LIBS / jar}.jar" for jar in JAVA_JARS if not (JAVA_LIBS / f"{jar}.jar").exists()]
    )
    assert plugin is not None
    # The entry names the plugin protoc-gen-grpc-java; Debian installs it as grpc_java_plugin.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "protoc-gen-grpc-java").symlink_to(plugin)
    generated, names = generate("Java", tmp_path, f"{bin_dir}{os.pathsep}{base_path()}", "*.java")
    assert names == [
        "Error.java",
        "Image.java",
        "ImageServiceGrpc.java",
        "ImageServiceOuterClass.java",
        "Vm.java",
        "VmInstanceServiceGrpc.java",
        "VmInstanceServiceOuterClass.java",
    ]
    image = (generated / "Image.java").read_text()
    assert "boolean hasSize()" in image  # proto3 `optional`: presence is kept
    classpath = os.pathsep.join(str(JAVA_LIBS / f"{jar}.jar") for jar in JAVA_JARS)
    classes = tmp_path / "classes"
    build = subprocess.run(
        [
            "javac",
            "-nowarn",
            "-d",
            str(classes),
            "-cp",
            classpath,
            *map(str, sorted(generated.glob("*.java"))),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert (classes / "zstack" / "v1" / "VmInstanceServiceGrpc.class").exists()
