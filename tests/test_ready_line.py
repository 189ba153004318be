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


def test_the_ready_line_says_when_zstack_rejects_the_account():
    """A wrong password: the gateway starts, and its ready line says that ZStack rejected the account
    and what calls get until it accepts it; the printed command gets exactly that."""
    env = {"ZSTACK_PASSWORD": "not-the-password"}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("zstack-gateway")),
            "--demo",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--shutdown-grace",
            "1",
            "--auth-mode",
            "account",
            "--zstack-account",
            "admin",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "ready on 127.0.0.1:" in ready
        assert "but ZStack rejected the gateway's account 'admin': wrong account name or password" in ready
        assert "every call fails with UNAUTHENTICATED (ZSTACK_ACCOUNT_REJECTED)" in ready
        assert "health says NOT_SERVING" in ready
        assert "not-the-password" not in ready
        assert proc.stdout.readline().strip() == "try it:"
        out = run_as_printed(proc.stdout.readline().strip(), env)
        assert out.returncode != 0
        assert "Code: Unauthenticated" in out.stderr
        assert "ZStack rejected the gateway's account 'admin'" in out.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_ready_line_says_when_zstack_is_not_ready():
    closed = free_port()  # nothing listens there
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("zstack-gateway")),
            "--zstack-url",
            f"http://127.0.0.1:{closed}",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--shutdown-grace",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        note = "but health says NOT_SERVING until ZStack is ready: "
        assert f"ZStack at http://127.0.0.1:{closed}, {note}" in ready
        assert "ZStack is unreachable" in ready
    finally:
        proc.terminate()
        proc.wait(10)
