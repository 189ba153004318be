"""The command `zstack-gateway --demo` prints under "try it:" works as printed, in every mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pki import HAVE_OPENSSL, make_pki
from zstack_sim.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
GRPCURL = Path(sys.executable).with_name("grpcurl")


def printed_command(*flags: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    exe = Path(sys.executable).with_name("zstack-gateway")
    proc = subprocess.Popen(
        [str(exe), "--demo", "--listen", f"127.0.0.1:{port}", "--shutdown-grace", "1", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert f"ready on 127.0.0.1:{port}" in ready, proc.stderr.read() if proc.stderr else ready
    assert proc.stdout.readline().strip() == "try it:"
    return proc, proc.stdout.readline().strip()


def run_as_printed(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **env, "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}"},
    )


@pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command")
@pytest.mark.parametrize("tokens_from", ["file", "env"])
def test_the_printed_command_works_with_tls_and_caller_tokens(tmp_path: Path, tokens_from: str):
    pki = make_pki(tmp_path)
    token = "t0ken-" + "x" * 26
    env = {"ZSTACK_PASSWORD": "password"}
    flags = ["--auth-mode", "account", "--zstack-account", "admin"]
    flags += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    if tokens_from == "file":
        (tmp_path / "tokens").write_text(token + "\n")
        flags += ["--caller-tokens-file", str(tmp_path / "tokens")]
    else:
        env["GATEWAY_CALLER_TOKENS"] = f"{token},other-{'y' * 20}"
    proc, command = printed_command(*flags, env=env)
    try:
        assert "-plaintext" not in command and token not in command
        out = run_as_printed(command, env)
        assert out.returncode == 0, (command, out.stderr)
        assert "TinyLinux" in out.stdout
    finally:
        proc.terminate()
        proc.wait(10)
