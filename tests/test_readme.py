"""The README's first calls work as printed, from the checkout, against `zstack-gateway --demo`: every
grpcurl command, the Python snippet and the `zstack-iso` line (the port swapped for a free one)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstack_sim
from zstack_sim.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
DEFAULT = "127.0.0.1:50051"


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


def shell_commands(prefix: str) -> list[str]:
    """Every command in the README that starts with ``prefix``: in ```sh blocks (continued lines
    joined) and in inline code."""
    found = []
    for block in fenced("sh"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith(prefix):
                found.append(command.split("  #")[0].strip())
    found += [c for c in re.findall(r"`([^`\n]+)`", README) if c.startswith(prefix)]
    return found


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [str(BIN / "zstack-gateway"), "--demo", "--listen", address, "--shutdown-grace", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert "ready on" in proc.stdout.readline()
    yield address
    proc.terminate()
    proc.wait(timeout=15)


def run(command: str, address: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command.replace(DEFAULT, address),
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_the_readme_has_the_first_calls() -> None:
    assert len(shell_commands(".venv/bin/grpcurl")) >= 4
    assert len(fenced("python")) == 1
    assert shell_commands("ZSTACK_ISO_SESSION=")


def test_every_grpcurl_command_works_as_printed(gateway: str) -> None:
    for command in shell_commands(".venv/bin/grpcurl"):
        out = run(command, gateway)
        assert out.returncode == 0, (command, out.stderr)
        assert out.stdout.strip(), command


def test_the_python_snippet_prints_the_demo_images(gateway: str) -> None:
    [code] = fenced("python")
    out = subprocess.run(
        [sys.executable, "-c", code.replace(DEFAULT, gateway)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "TinyLinux" in out.stdout


def test_the_zstack_iso_line_prints_a_table(gateway: str) -> None:
    [command] = shell_commands("ZSTACK_ISO_SESSION=")
    out = run(
        command.replace(".venv/bin/zstack-iso", f"{BIN}/zstack-iso"), gateway, ZSTACK_ISO_TARGET=gateway
    )
    assert out.returncode == 0, out.stderr
    assert "TinyLinux" in out.stdout


def test_the_demo_table_names_the_simulators_data() -> None:
    section = README[README.index("## The demo's data") : README.index("## Against a real ZStack")]
    for value in (
        zstack_sim.DEMO_SESSION_UUID,
        zstack_sim.DEMO_VM_UUID,
        zstack_sim.DEMO_STOPPED_VM_UUID,
        zstack_sim.DEMO_STARTING_VM_UUID,
        zstack_sim.DEMO_EMPTY_VM_UUID,
        zstack_sim.DEMO_MISSING_VM_UUID,
        zstack_sim.DEMO_ACCOUNT_NAME,
        zstack_sim.DEMO_ACCOUNT_PASSWORD,
        zstack_sim.DEMO_ACCESS_KEY_ID,
        zstack_sim.DEMO_ACCESS_KEY_SECRET,
    ):
        assert f"`{value}`" in section, value


def test_the_iso_workflow_walk_works_as_printed(gateway: str) -> None:
    """docs/iso-workflow.md's walk against the demo, block by block in one shell: candidate VMs,
    attach with a request id, the same attach without one refused (FAILED_PRECONDITION), detach."""
    text = (ROOT / "docs" / "iso-workflow.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 4
    script = "".join(f'{block}echo "=== $?"\n' for block in blocks)
    out = run(script, gateway)
    parts = out.stdout.split("=== ")
    codes = [int(part.split("\n", 1)[0]) for part in parts[1:]]
    assert codes == [0, 0, 64 + 9, 0], (codes, out.stdout, out.stderr)  # grpcurl: 64 + the gRPC code
    assert '"name": "demo-vm-stopped"' in parts[0]
    assert '"isoUuid": "30bb7b0024d541f08c203131764671be"' in parts[1]
    assert "Code: FailedPrecondition" in out.stderr and "SYS.1006" in out.stderr
    assert '"isoUuid"' not in parts[3].split('"vmCdRoms"')[1]
