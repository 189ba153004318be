"""The processes a benchmark runs: the simulator, the gateway and the bare gRPC server.

Each runs as its own subprocess on a loopback port it picks itself (port 0); the harness reads the
real address from the process's ready line. Output goes to a log file, so a full pipe can never
stall a server, and the log's tail is shown when a process fails to start.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

SIM_READY = re.compile(r"zstack-sim listening on (http://127\.0\.0\.1:\d+)")
GATEWAY_READY = re.compile(r"zstack-gateway ready on (127\.0\.0\.1:\d+)")
BARE_READY = re.compile(r"bare-server ready on (127\.0\.0\.1:\d+)")

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class HarnessError(RuntimeError):
    """The harness itself broke (a process would not start, a call failed): not a missed target."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    address: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after a few seconds."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_S)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        return cpu_seconds(self.pid)


def _console_script(name: str, module: str) -> list[str]:
    """The venv's console script next to this interpreter, or ``python -m module`` without one."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(name: str, argv: list[str], ready: re.Pattern[str], log_dir: Path) -> Proc:
    """Start ``argv`` and wait (bounded) until its output matches ``ready``; group 1 is its address."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = ready.search(log_path.read_text(errors="replace"))
        if match:
            return Proc(name, popen, log_path, match.group(1))
        if popen.poll() is not None:
            raise HarnessError(f"{name} exited with {popen.returncode}:\n{_log_tail(log_path)}")
        time.sleep(0.05)
    Proc(name, popen, log_path, "").stop()
    raise HarnessError(f"{name} not ready after {START_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}")


def start_simulator(log_dir: Path, tag: str, generate_images: int | None) -> Proc:
    """A simulator on a free loopback port: the demo data, or ``generate_images`` generated ISOs."""
    argv = [*_console_script("zstack-sim", "zstack_sim.cli"), "--listen", "127.0.0.1:0"]
    if generate_images is not None:
        argv += ["--generate-images", str(generate_images)]
    return start(f"sim-{tag}", argv, SIM_READY, log_dir)


def start_gateway(log_dir: Path, tag: str, zstack_url: str) -> Proc:
    argv = [
        *_console_script("zstack-gateway", "zstack_gateway"),
        "--listen",
        "127.0.0.1:0",
        "--zstack-url",
        zstack_url,
    ]
    return start(f"gateway-{tag}", argv, GATEWAY_READY, log_dir)


def start_bare_server(log_dir: Path, zstack_url: str) -> Proc:
    argv = [
        sys.executable,
        str(BENCH / "bare_server.py"),
        "--listen",
        "127.0.0.1:0",
        "--zstack-url",
        zstack_url,
    ]
    return start("bare-server", argv, BARE_READY, log_dir)


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


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory line of /proc/PID/status (``VmRSS`` now, ``VmHWM`` the peak so far), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise HarnessError(f"no {key} for pid {pid}")
