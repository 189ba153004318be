"""``zstack-sim`` and ``zstack-gateway`` as processes of their own, for tests and benchmarks that must
see a real process (its exit code, its output byte for byte, its memory and CPU from /proc).

:func:`start` runs a command on loopback and waits (bounded) for its ready line. Its stdout and
stderr each go to a file of their own in a directory the caller gives, so a full pipe can never
stall a server and a process's log is exactly what it wrote to stderr (the ready lines go to
stdout). :meth:`Proc.stop` sends SIGTERM and, if the process is still there after a while, SIGKILL.

The child's environment is this process's without ``GATEWAY_*`` and ``ZSTACK_*`` (settings the
gateway and the CLI read from there): only the arguments given count.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "GATEWAY_READY",
    "SIM_READY",
    "Proc",
    "StartError",
    "console_script",
    "free_port",
    "memory_bytes",
    "scrape",
    "start",
    "start_gateway",
    "start_simulator",
    "wait_until",
]

#: The ready lines, group 1 the address to connect to.
SIM_READY = re.compile(r"zstack-sim listening on (http://127\.0\.0\.1:\d+)")
GATEWAY_READY = re.compile(r"zstack-gateway ready on (127\.0\.0\.1:\d+)")

#: Environment variables a started process does not inherit (by prefix).
SETTINGS_PREFIXES = ("GATEWAY_", "ZSTACK_")
#: Kept although they match SETTINGS_PREFIXES: how the process runs, not a setting (the gateway's
#: pure-Python translation path, or asyncio's own event loop, forced).
KEPT_ENV = frozenset({"ZSTACK_GATEWAY_PURE", "ZSTACK_GATEWAY_LOOP"})


class StartError(RuntimeError):
    """A process exited, or printed no ready line in time; the message holds its output's tail."""


def console_script(name: str, module: str) -> list[str]:
    """The console script ``name`` next to this interpreter, or ``python -m module`` without one."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def free_port() -> int:
    """A loopback port nothing listened on a moment ago (for a refused connection, or a listener
    that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 2.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it is true or ``timeout`` seconds have passed;
    whether it was true in the end."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """A Prometheus text page (``/metrics``) as ``{"name{labels}": value}``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def memory_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory line of /proc/PID/status in bytes: ``VmRSS`` now, ``VmHWM`` the peak so far."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"no {key} in /proc/{pid}/status")


@dataclass
class Proc:
    """A started process: ``address`` is what its ready line said."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    log_path: Path
    address: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        """The port of ``address``."""
        return int(self.address.rpartition(":")[2])

    def output(self) -> str:
        """Everything it wrote to stdout so far."""
        return self.out_path.read_text(errors="replace")

    def log_bytes(self) -> bytes:
        """Everything it wrote to stderr so far, byte for byte."""
        return self.log_path.read_bytes()

    def log(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds; the exit code
        (negative: the signal that ended it). Stopping an ended process only reads its code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            if self.wait(timeout) is None:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, at once (a test's clean-up, when the process's own shutdown is not the point)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def memory(self, key: str = "VmRSS") -> int:
        """See :func:`memory_bytes`."""
        return memory_bytes(self.pid, key)

    def reset_peak(self) -> None:
        """Start VmHWM again from the current RSS (Linux: 5 to /proc/PID/clear_refs)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(nothing)"


def start(
    name: str,
    argv: Sequence[str],
    ready: re.Pattern[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    drop_env: Sequence[str] = SETTINGS_PREFIXES,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Proc:
    """Start ``argv`` with stdout to ``log_dir/NAME.out`` and stderr to ``log_dir/NAME.log``, and wait
    until stdout matches ``ready`` (group 1: the address). ``env`` is added to the environment, after
    the variables starting with one of ``drop_env`` are left out. Raises :class:`StartError` when
    the process exits first or ``timeout`` seconds pass (the process is then killed)."""
    out_path, log_path = log_dir / f"{name}.out", log_dir / f"{name}.log"
    child_env = {k: v for k, v in os.environ.items() if k in KEPT_ENV or not k.startswith(tuple(drop_env))}
    child_env.update(env or {})
    with out_path.open("wb") as out, log_path.open("wb") as log:
        popen = subprocess.Popen(  # noqa: S603 - the caller's own command, no shell
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=log, env=child_env, cwd=cwd
        )
    proc = Proc(name, popen, out_path, log_path, "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ready.search(proc.output())
        if match:
            proc.address = match.group(1)
            return proc
        if popen.poll() is not None:
            raise StartError(f"{name} exited with {popen.returncode}:\n{_tail(out_path)}\n{_tail(log_path)}")
        time.sleep(0.02)
    proc.kill()
    raise StartError(f"{name} not ready after {timeout:.0f} s:\n{_tail(out_path)}\n{_tail(log_path)}")


def start_simulator(
    log_dir: Path,
    *args: str,
    name: str = "simulator",
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Proc:
    """``zstack-sim --listen 127.0.0.1:0 ARGS``; its ``address`` is its URL."""
    argv = [*console_script("zstack-sim", "zstack_sim.cli"), "--listen", "127.0.0.1:0", *args]
    return start(name, argv, SIM_READY, log_dir, env=env, timeout=timeout)


def start_gateway(
    log_dir: Path,
    zstack_url: str,
    *args: str,
    name: str = "gateway",
    command: Sequence[str] | None = None,
    listen: str = "127.0.0.1:0",
    env: Mapping[str, str] | None = None,
    drop_env: Sequence[str] = SETTINGS_PREFIXES,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Proc:
    """``zstack-gateway --listen LISTEN --zstack-url ZSTACK_URL ARGS``, or ``command`` (an argv
    that runs the gateway's CLI) instead of the console script; its ``address`` is ``HOST:PORT``.
    The keyword arguments after ``listen`` are :func:`start`'s."""
    base = list(command) if command is not None else console_script("zstack-gateway", "zstack_gateway")
    argv = [*base, "--listen", listen, "--zstack-url", zstack_url, *args]
    return start(name, argv, GATEWAY_READY, log_dir, env=env, drop_env=drop_env, cwd=cwd, timeout=timeout)
