"""The Python client installs alone: ``pip install ./client`` into a fresh virtual environment gives
the zstack_iso library, the zstack.v1 stubs and the ``zstack-iso`` command, with none of the
gateway's dependencies, and both work against a real gateway.

It needs the package index (pip's cache makes repeated runs fast). Set
ZSTACK_SKIP_CLIENT_INSTALL_TEST=1 to skip it on a machine without one; the skip is then reported
with that reason, never silent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import zstack_sim
from conftest import SESSION
from harness import GatewayThread
from zstack_sim.control_client import SimControl

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"
SKIP_ENV = "ZSTACK_SKIP_CLIENT_INSTALL_TEST"
# What the gateway and the simulator need and a client must not pull in.
SERVER_ONLY = ("aiohttp", "prometheus_client", "orjson", "msgspec", "tzdata", "zstack_gateway", "zstack_sim")

needs_index = pytest.mark.skipif(
    os.environ.get(SKIP_ENV, "") not in ("", "0"),
    reason=f"{SKIP_ENV} is set: the stand-alone install of the client was not tested",
)


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the fresh venv see the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ZSTACK_ISO_")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only ``pip install <copy of client/>`` in it; returns its bin directory."""
    tmp = tmp_path_factory.mktemp("client-install")
    # Build from a copy, so the build leaves no build/ or *.egg-info in the checkout.
    source = tmp / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "venv", str(tmp / "venv")], check=True, capture_output=True, timeout=120
    )
    bin_dir = tmp / "venv" / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
        cwd=tmp,
    )
    assert done.returncode == 0, f"pip install ./client failed:\n{done.stdout}\n{done.stderr}"
    return bin_dir


def _python(bin_dir: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "python"), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=bin_dir.parent.parent,
    )


@needs_index
def test_the_client_alone_has_no_server_dependencies(venv: Path) -> None:
    probe = _python(
        venv,
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))",
        *SERVER_ONLY,
        "zstack_iso",
        "zstack.v1.image_pb2",
        "grpc_status",
        "google.rpc.status_pb2",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert [m for m in SERVER_ONLY if found[m]] == []
    assert found["zstack_iso"] and found["zstack.v1.image_pb2"]
    assert found["grpc_status"] and found["google.rpc.status_pb2"]
    # Its own files, not the checkout's.
    where = _python(venv, "import zstack_iso; print(zstack_iso.__file__)")
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout
    scripts = {p.name for p in venv.iterdir()}
    assert "zstack-iso" in scripts
    assert not {"zstack-gateway", "zstack-sim"} & scripts
    check = subprocess.run(
        [str(venv / "python"), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
    )
    assert check.returncode == 0, check.stdout + check.stderr


@needs_index
def test_the_installed_client_and_command_call_a_gateway(
    venv: Path, gateway: GatewayThread, sim: SimControl
) -> None:
    code = (
        "import sys\n"
        "from zstack_iso import IsoClient, ZStackError\n"
        "with IsoClient(sys.argv[1], session=sys.argv[2], timeout=10) as c:\n"
        "    print(' '.join(i.uuid for i in c.list_candidates(sys.argv[3])))\n"
        "    try:\n"
        "        c.list_candidates(sys.argv[4])\n"
        "    except ZStackError as e:\n"
        "        print(e.code.name, e.zstack_code)\n"
    )
    done = _python(
        venv, code, gateway.target, SESSION, zstack_sim.DEMO_VM_UUID, zstack_sim.DEMO_MISSING_VM_UUID
    )
    assert done.returncode == 0, done.stderr
    images, error = done.stdout.splitlines()
    assert images.split() == list(zstack_sim.DEMO_IMAGE_UUIDS)
    assert error == "NOT_FOUND SYS.1003"
    env = {**_clean_env(), "ZSTACK_ISO_TARGET": gateway.target, "ZSTACK_ISO_SESSION": SESSION}
    cli = subprocess.run(
        [str(venv / "zstack-iso"), "candidates", zstack_sim.DEMO_VM_UUID, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert cli.returncode == 0, cli.stderr
    assert [i["uuid"] for i in json.loads(cli.stdout)] == list(zstack_sim.DEMO_IMAGE_UUIDS)


def _generated_versions() -> tuple[str, str]:
    """(grpcio, protobuf) versions the committed stubs were generated with; each needs at least its own."""
    stubs = CLIENT / "zstack" / "v1"
    grpc_text = (stubs / "vm_instance_service_pb2_grpc.py").read_text()
    pb_text = (stubs / "vm_instance_service_pb2.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_text)
    pb_version = re.search(r"# Protobuf Python Version: ([\d.]+)", pb_text)
    assert grpc_version and pb_version
    return grpc_version.group(1), pb_version.group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_client_requires_the_versions_its_stubs_were_generated_with() -> None:
    # Stubs refuse to load under an older grpcio or protobuf than generated them; the client's
    # minimums must follow `make gen`, or pip may install a pair that fails at import.
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    minimums = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition(">=")
        minimums[name.strip()] = version.strip()
    assert set(minimums) == {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
    grpc_generated, protobuf_generated = _generated_versions()
    assert _version(minimums["grpcio"]) >= _version(grpc_generated)
    assert _version(minimums["protobuf"]) >= _version(protobuf_generated)
    assert project["scripts"] == {"zstack-iso": "zstack_iso.cli:main"}
