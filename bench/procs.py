"""The processes a benchmark runs: the simulator, the gateway and the bare gRPC server.

Each runs as its own subprocess on a loopback port it picks itself (port 0), started by
:mod:`zstack_sim.processes` (the same launcher the tests use), which reads the real address from
the process's ready line and keeps its output in files, so a full pipe can never stall a server
and the output's tail is shown when a process fails to start. This module adds the bare server and
the processes' CPU time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from zstack_sim.control_client import ControlError
from zstack_sim.processes import Proc, StartError, start, start_gateway, start_simulator

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

BARE_READY = re.compile(r"bare-server ready on (127\.0\.0\.1:\d+)")

START_TIMEOUT_S = 90.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class HarnessError(RuntimeError):
    """The harness itself broke (a process would not start, a call failed): not a missed target."""


#: Everything that means the harness broke, this module's and the shared launcher's and control
#: client's.
HARNESS_ERRORS = (HarnessError, StartError, ControlError)


def simulator(log_dir: Path, tag: str, generate_images: int | None) -> Proc:
    """A simulator on a free loopback port: the demo data, or ``generate_images`` generated ISOs."""
    args = [] if generate_images is None else ["--generate-images", str(generate_images)]
    return start_simulator(log_dir, *args, name=f"sim-{tag}", timeout=START_TIMEOUT_S)


def gateway(log_dir: Path, tag: str, zstack_url: str) -> Proc:
    return start_gateway(log_dir, zstack_url, name=f"gateway-{tag}", cwd=ROOT, timeout=START_TIMEOUT_S)


def bare_server(log_dir: Path, zstack_url: str, *, relay: bool = False) -> Proc:
    """The bare grpc.aio server of P5; ``relay``: its floor, with one GET to ``zstack_url`` per call."""
    argv = [
        sys.executable,
        str(BENCH / "bare_server.py"),
        "--listen",
        "127.0.0.1:0",
        "--zstack-url",
        zstack_url,
        *(["--relay"] if relay else []),
    ]
    name = "relay-server" if relay else "bare-server"
    return start(name, argv, BARE_READY, log_dir, cwd=ROOT, timeout=START_TIMEOUT_S)


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid``'s live threads have run, to the nanosecond (schedstat), or from the
    clock-tick counters of /proc/PID/stat where schedstat is missing."""
    if not Path(f"/proc/{pid}/schedstat").exists():
        return _cpu_seconds_from_stat(pid)
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def _cpu_seconds_from_stat(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the ")" that ends the command name, field 3 (state) is index 0: utime (14) is index 11.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
