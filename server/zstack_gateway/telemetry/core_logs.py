"""``--log-format json``: every line on stderr is JSON, grpc core's own lines included.

grpc's C core writes its log lines (``I1201 12:00:00.000000  1234 ssl_transport_security.cc:1659]
Handshake failed ...``, and every tracer's output under ``GRPC_TRACE``) straight to file descriptor
2, past Python's logging. :func:`start` puts a pipe in place of fd 2 and starts a **pump process**
(this file run by a bare interpreter, ``python -I -S``: the standard library and ``logs.py``, about
10 MB) that owns the pipe's read end and writes each line to the real stderr: a line that is already one
JSON object (the gateway's own records) as it is, any other line as a JSON object of its own
(:func:`to_json`: grpc core's lines with their level, source ``file:line`` and the logger
``grpc.core``; anything else with the logger ``stderr``).

Why a process and not a thread: a thread reading the pipe needs the GIL, and C code that holds the
GIL may block writing to the full pipe (``GRPC_TRACE=all``): a deadlock. The pump has an
interpreter of its own, so the gateway's writes only ever wait for the pump to read.

The pump starts before grpc starts any thread, ignores SIGINT and SIGTERM (a Ctrl-C reaches the
whole process group: the gateway drains, the pump keeps writing its lines) and ends when the last
writer closes the pipe (the gateway and its ``--workers``). At exit (:meth:`Pump.exit`) the gateway hands fd 2
back to the real stderr and waits for the pump, so every line is written before the gateway's exit
status is seen.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING or __name__ != "__main__":
    from zstack_gateway.telemetry.logs import LINE_BYTES, clean
else:  # the pump (see start): no package on the path, logs.py (standard library only) from beside this file
    import importlib.util
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("_gateway_logs", Path(__file__).with_name("logs.py"))
    assert _spec is not None and _spec.loader is not None
    _logs = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_logs)
    LINE_BYTES, clean = _logs.LINE_BYTES, _logs.clean

__all__ = ["Pump", "start", "to_json"]

#: Seconds the gateway waits at exit for the pump to write what is left.
EXIT_WAIT = 5.0
#: Bytes of one stderr line the pump reads before cutting it (a longer line is ended there).
READ_LINE_BYTES = 64 * 1024

# glog/absl's prefix: severity, MMDD or 0000, time, thread id, file:line, "]".
_CORE_LINE = re.compile(
    r"^(?P<severity>[DIWEF])(?P<date>\d{4}) +(?P<clock>\d{2}:\d{2}:[\d.]+) +(?P<thread>\d+) +"
    r"(?P<file>[^\s:\]]+):(?P<line>\d+)\] ?(?P<message>.*)$",
    re.DOTALL,
)
_LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# Credentials that a tracer might print in clear: a header or setting's value, an Authorization
# scheme's token. grpc's own tracers print metadata values as "N bytes redacted"; this is the
# second line of defence.
_SECRET_HEADER = re.compile(
    r"(?i)\bkey=(authorization|proxy-authorization|cookie|set-cookie|x-api-token)\s+value=.*"
)
_SECRET_VALUE = re.compile(
    r"(?i)\b(authorization|cookie|set-cookie|x-api-token|password|secret|token)(['\"]?\s*[:=]\s*['\"]?)"
    r"[^\s'\",]+(?:\s+[^\s'\",]+)?"
)
_SCHEME_TOKEN = re.compile(r"(?i)\b(OAuth|Bearer|Basic|ZStack)\s+[A-Za-z0-9._~+/=:-]{8,}")


def redact(text: str) -> str:
    """``text`` without the values of credential-looking fields or Authorization tokens."""
    text = _SECRET_HEADER.sub(lambda m: f"key={m.group(1)} value=<redacted>", text)
    text = _SECRET_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _SCHEME_TOKEN.sub(lambda m: f"{m.group(1)} <redacted>", text)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class Converter:
    """Lines of stderr to JSON lines. A line that is not JSON and has no grpc prefix right after a
    grpc core line (or its continuation) continues that message (grpc writes some messages over
    several lines): it keeps its level and logger; any other one is ``stderr`` at ERROR (e.g. a
    crash's traceback). Blank lines carry nothing and are dropped."""

    def __init__(self) -> None:
        self._continues: str | None = None  # the level of the grpc message a next line continues

    def __call__(self, raw: bytes) -> bytes:
        """One line (without its newline) as one JSON line (with its newline, at most
        :data:`~zstack_gateway.telemetry.logs.LINE_BYTES` bytes), or b"" for a blank line."""
        if raw.startswith(b"{") and len(raw) < LINE_BYTES:
            try:
                if isinstance(json.loads(raw), dict):
                    self._continues = None
                    return raw + b"\n"
            except ValueError:
                pass
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return b""
        match = _CORE_LINE.match(text)
        fields: dict[str, object]
        if match is not None:
            self._continues = _LEVELS[match["severity"]]
            fields = {
                "time": _now(),
                "level": self._continues,
                "logger": "grpc.core",
                "message": clean(redact(match["message"])),
                "source": clean(f"{match['file']}:{match['line']}", 256),
                "thread": int(match["thread"]),
            }
        elif self._continues is not None:
            fields = {
                "time": _now(),
                "level": self._continues,
                "logger": "grpc.core",
                "message": clean(redact(text)),
                "continued": True,
            }
        else:
            fields = {"time": _now(), "level": "ERROR", "logger": "stderr", "message": clean(redact(text))}
        return _fit(fields)


def to_json(raw: bytes) -> bytes:
    """One line on its own (see :class:`Converter`)."""
    return Converter()(raw)


def _fit(fields: dict[str, object]) -> bytes:
    line = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    if len(line) + 1 > LINE_BYTES:  # wide characters: cut the message further
        fields["message"] = clean(str(fields["message"]), LINE_BYTES // 4)
        line = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    return line + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
        except OSError:  # the real stderr is gone (closed, EPIPE): nothing left to write to
            return
        view = view[written:]


def _pump(read_fd: int, out_fd: int) -> None:
    """Copy ``read_fd`` to ``out_fd`` line by line as JSON until the last writer closes it."""
    pending = b""
    convert = Converter()
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:  # pragma: no cover
            continue
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        if len(pending) > READ_LINE_BYTES:  # no newline in sight: end the line here
            lines.append(pending)
            pending = b""
        if lines:
            _write_all(out_fd, b"".join(convert(line) for line in lines))
    if pending:
        _write_all(out_fd, convert(pending))


class Pump:
    """The running pump (see :func:`start`)."""

    def __init__(self, process: subprocess.Popen[bytes], real_stderr: int) -> None:
        self.process = process
        self.real_stderr = real_stderr
        self.done = False

    def exit(self, code: int) -> NoReturn:
        """End the process with ``code`` once the pump has written every line.

        Python's finalization is skipped (as a ``--workers`` worker does): grpc core would log its
        clean-up (``GRPC_TRACE``) after the last moment the pump can be waited for, onto the real
        stderr. Everything is stopped and closed by now; logging and stdout are flushed here."""
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self.finish()
        os._exit(code)

    def finish(self, timeout: float = EXIT_WAIT) -> None:
        """Hand fd 2 back to the real stderr (closing this process's end of the pipe) and wait up
        to ``timeout`` seconds for the pump to write what is left and exit (idempotent)."""
        if self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self.real_stderr, 2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


def start() -> Pump:
    """Start the pump and put the write end of its pipe in place of fd 2; at exit,
    :meth:`Pump.exit` (or, for an exit that does not pass there, :meth:`Pump.finish` at exit).

    Call it before grpc starts any thread: a fork with threads running may deadlock."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    real_stderr = os.dup(2)
    # SIG_IGN survives exec (and Popen resets only SIGPIPE and SIGXFSZ): the pump ignores both from
    # its first instruction, so a Ctrl-C at the wrong moment cannot take the gateway's stderr away.
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        process = subprocess.Popen(  # noqa: S603 - this interpreter and this file, no shell
            [sys.executable, "-I", "-S", __file__],
            stdin=read_fd,
            stdout=real_stderr,
            stderr=real_stderr,
        )
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        os.close(read_fd)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = Pump(process, real_stderr)
    atexit.register(pump.finish)
    return pump


if __name__ == "__main__":
    _pump(0, 1)
