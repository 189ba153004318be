"""`zstack-gateway --help` leads a newcomer; a secret tried as a flag is refused without being echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("zstack-gateway")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=60)


def test_help_shows_what_is_required_and_an_example_per_mode():
    out = run("--help")
    assert out.returncode == 0
    assert "Required: --zstack-url (or --demo)" in out.stdout.replace("\n", " ").replace("  ", " ")
    assert "examples:" in out.stdout and "zstack-gateway --demo" in out.stdout
    assert "--auth-mode account --zstack-account admin" in out.stdout


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--password", "hunter2-secret"], "ZSTACK_PASSWORD"),
        (["--password=hunter2-secret"], "ZSTACK_PASSWORD"),
        (["--access-key-secret", "hunter2-secret"], "ZSTACK_ACCESS_KEY_SECRET"),
        (["--caller-tokens", "hunter2-secret"], "GATEWAY_CALLER_TOKENS"),
    ],
)
def test_a_secret_given_as_a_flag_says_where_it_goes_and_is_not_echoed(args, hint):
    out = run(*args)
    assert out.returncode == 2
    assert hint in out.stderr and "does not exist" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1
