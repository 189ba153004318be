"""What reaches the logs: no caller secret in any output, one bounded line per record, and only a
valid W3C traceparent passed on to ZStack.

The gateway runs as a real process (``zstack-gateway``) at DEBUG, in json and in text format, its
stderr collected byte for byte: that is every log line, grpc core's own output included. A caller
that sends what grpc's clients refuse to send (a metadata value that is not UTF-8) is played by
:mod:`rawh2`, a hand-written HTTP/2 client.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import rawh2
import zstack_sim
from hypothesis import given, settings
from hypothesis import strategies as st
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway.telemetry import logs
from zstack_sim.control_client import SimControl
from zstack_sim.processes import Proc

GATEWAY_BIN = Path(sys.executable).with_name("zstack-gateway")
VM = zstack_sim.DEMO_VM_UUID
AUTH = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)
METHOD = "/zstack.v1.VmInstanceService/GetCandidateIso"
LINE_BYTES = 8192  # newline included
FORMATS = ["json", "text"]


@pytest.fixture
def start(gateway_process) -> Callable[..., Proc]:
    """start(fmt, env) -> the gateway as a process at DEBUG with log format ``fmt``; no GRPC_*
    variable reaches it but those of ``env``."""

    def _start(fmt: str, env: dict[str, str] | None = None) -> Proc:
        return gateway_process(
            "--log-level", "DEBUG", "--log-format", fmt, env=env, drop_env=("GATEWAY_", "ZSTACK_", "GRPC_")
        )

    return _start


def stop(gw: Proc) -> bytes:
    """SIGTERM, an exit with 0, and everything the process wrote to stderr."""
    assert gw.stop(20) == 0, gw.log()
    return gw.log_bytes()


def call(target: str, vm: str = VM) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        try:
            list(
                stub.GetCandidateIso(
                    svc.GetCandidateIsoRequest(vm_instance_uuid=vm), metadata=AUTH, timeout=10
                )
            )
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            return err.code()
    return grpc.StatusCode.OK


def log_lines(stderr: bytes, fmt: str, grpc_core: bool = False) -> list[bytes]:
    """The gateway's log lines, each checked: at most LINE_BYTES bytes with its newline, valid
    UTF-8 without any character some reader takes for a line break, and in json format one JSON
    object. Every line of ``stderr`` must be one, unless ``grpc_core`` says grpc core's own output
    (lines like ``I1204 12:00:00.000 ...``) is in there too, in text format (in json format grpc
    core's lines are JSON objects too: telemetry/core_logs.py)."""
    assert stderr.endswith(b"\n")
    lines = stderr[:-1].split(b"\n")
    ours = [line for line in lines if line.startswith(b"{" if fmt == "json" else b"20")]
    if not grpc_core or fmt == "json":
        assert ours == lines, [line[:200] for line in lines if line not in ours]
    for line in ours:
        assert len(line) + 1 <= LINE_BYTES, f"a {len(line) + 1}-byte line: {line[:200]!r}..."
        text = line.decode("utf-8")
        assert text.splitlines() == [text], f"a line break inside: {text[:200]!r}"
        if fmt == "json":
            assert isinstance(json.loads(text), dict)
    return ours


# --- no caller secret in any output --------------------------------------------------------------

TOKEN = b"Tk-5d1e9a7c3b-leak-test"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_metadata_value_that_is_not_utf8_reaches_no_output(start, sim: SimControl, fmt: str):
    # grpc core at its most verbose, every tracer but the one the gateway refuses (see below).
    gw = start(fmt, {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "all,-chttp2_hpack_parser"})
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=VM).SerializeToString()
    headers = [
        [(b"authorization", b"Bearer " + TOKEN + b"\xe9")],
        [(b"authorization", b"OAuth " + TOKEN + b"\xff\xfe")],
        [(b"cookie", b"session=" + TOKEN + b"\xc3"), (b"x-api-token", TOKEN + b"\x80")],
    ]
    for metadata in headers:
        answer = rawh2.grpc_call(gw.port, METHOD, request, metadata, timeout=10)
        # The caller gets a clear status, at once: its credentials are not usable.
        assert answer.ended, "no answer"
        assert answer.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0], answer
    assert call(gw.address) == grpc.StatusCode.OK  # the gateway goes on serving
    stderr = stop(gw)
    assert TOKEN not in stderr
    assert TOKEN[:12] not in stderr
    assert b"not valid UTF-8" in stderr  # grpc's complaint is there, without the value
    log_lines(stderr, fmt, grpc_core=True)


@pytest.mark.parametrize("trace", ["chttp2_hpack_parser", "all", "http,chttp2_*", "*hpack*"])
def test_a_grpc_tracer_that_prints_headers_is_refused(simulator, trace: str):
    """grpc core's header tracer writes every metadata value, credentials included, to stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZSTACK_", "GRPC_"))}
    proc = subprocess.Popen(
        [str(GATEWAY_BIN), "--listen", "127.0.0.1:0", "--zstack-url", simulator.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "GRPC_TRACE": trace},
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the gateway started with GRPC_TRACE={trace}: {out}")
    assert proc.returncode == 2
    assert "chttp2_hpack_parser" in err and "refusing to start" in err


# --- one bounded line per record -----------------------------------------------------------------

# Fits the 64 characters of the VM uuid that the call's line holds.
FORGED = '\nFORGED ERROR fake: x\r\x1b[2K\u2028\x85{"level": "ERROR"}\x00'


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_newline_in_the_vm_uuid_cannot_forge_a_line(start, sim: SimControl, fmt: str):
    gw = start(fmt)
    assert call(gw.address, vm="x" + FORGED) == grpc.StatusCode.INVALID_ARGUMENT
    stderr = stop(gw)
    lines = log_lines(stderr, fmt)
    for raw in (b"\r", b"\x1b", b"\x00", "\u2028".encode(), "\x85".encode()):
        assert raw not in stderr
    forged = [line for line in stderr.split(b"\n") if b"FORGED" in line]
    assert len(forged) == 1, forged  # the call's own line, not a line of its own
    assert forged[0] in lines and b"INVALID_ARGUMENT" in forged[0]
    if fmt == "json":
        entry = json.loads(forged[0])
        assert entry["vm"].startswith("x\\nFORGED ERROR")  # visible as an escape, also once decoded
        assert entry["grpc_code"] == "INVALID_ARGUMENT"
    else:
        assert b'vm="x\\nFORGED ERROR fake: x\\r\\x1b[2K\\u2028\\x85{\\"level\\":' in forged[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_huge_zstack_error_makes_no_huge_line(start, sim: SimControl, fmt: str):
    gw = start(fmt)
    sim.fault(
        action="zstack_error",
        code="SYS." + "9" * 1_000_000,
        description="D\n" * 500_000,
        details="d" * 1_000_000,
        times=1,
    )
    assert call(gw.address) != grpc.StatusCode.OK
    stderr = stop(gw)
    lines = log_lines(stderr, fmt)
    # The call's own line (grpc may log at DEBUG that the handler left after sending its status).
    calls = [line for line in lines if METHOD.encode() in line and b"zstack_gateway.rpc" in line]
    assert len(calls) == 1
    assert b"...[cut " in calls[0]  # the cut is visible
    if fmt == "json":
        entry = json.loads(calls[0])
        assert entry["zstack_code"].startswith("SYS.999")
        assert entry["duration_ms"] > 0  # the short fields are all there


def _fail(depth: int) -> None:
    if depth:
        _fail_too(depth - 1)  # two functions in turn: Python folds no repeated frames
    raise ValueError("E" * 1_000_000 + "\nFORGED line from an exception")


def _fail_too(depth: int) -> None:
    _fail(depth)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_huge_exception_makes_one_bounded_line_with_its_last_frames(fmt: str):
    """Through the handler ``logs.setup`` installs: a traceback of 300 frames with a 1 MB message,
    a huge message, huge extra fields, then a record with hundreds of extra fields."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("DEBUG", fmt)
    (handler,) = root.handlers
    root.handlers[:], root.level = saved
    stream = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    log = logging.getLogger(f"test_log_safety.{fmt}")
    log.propagate = False
    log.handlers[:] = [handler]
    try:
        try:
            _fail(300)
        except ValueError:
            log.exception("failed: %s", "m" * 100_000, extra={"big": "b" * 100_000, "wide": "\u4e2d" * 5000})
        log.warning("many fields", extra={f"k{i}": "v" * 100 for i in range(500)})
        log.warning("with a stack", stack_info=True, extra={"ctl": "a\nb"})
    finally:
        log.handlers.clear()
    text = stream.getvalue()
    lines = log_lines(text.encode(), fmt)
    assert len(lines) == 3 == len(text.splitlines())
    first = lines[0].decode()
    assert "FORGED" in first  # the exception's last line, escaped, on the record's own line
    assert "in _fail_too" in first and "ValueError: EEE" in first
    assert "earlier lines]" in first  # the outer frames were cut, the innermost kept
    if fmt == "json":
        entry = json.loads(first)
        assert entry["exception"].endswith("\\nFORGED line from an exception")
        assert entry["message"].startswith("failed: mmm") and "...[cut " in entry["message"]
        many = json.loads(lines[1])
        assert many["message"] == "many fields"
        assert json.loads(lines[2])["ctl"] == "a\\nb"


# --- W3C traceparent ------------------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _forwarded(stub, sim: SimControl, metadata: tuple[tuple[str, str], ...]) -> str | None:
    list(
        stub.GetCandidateIso(
            svc.GetCandidateIsoRequest(vm_instance_uuid=VM), metadata=(*AUTH, *metadata), timeout=5
        )
    )
    headers = sim.zstack_requests()[-1]["headers"]
    found = [v for k, v in headers.items() if k.lower() == "traceparent"]
    return found[0] if found else None


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # hex is lowercase only
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters
        f" 00-{TRACE}-{PARENT}-01",
    ],
)
def test_an_invalid_traceparent_does_not_reach_zstack(stub, sim: SimControl, value: str):
    assert _forwarded(stub, sim, (("traceparent", value),)) is None


def test_a_valid_traceparent_reaches_zstack(stub, sim: SimControl):
    valid = f"00-{TRACE}-{PARENT}-01"
    assert _forwarded(stub, sim, (("traceparent", valid),)) == valid
    later = f"01-{TRACE}-{PARENT}-00"  # a later version in the same form, sampled flag off
    assert _forwarded(stub, sim, (("traceparent", later),)) == later


# --- lines written in batches ------------------------------------------------------------------------


class _Writes(io.StringIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _batching(delay: float = 0.05) -> tuple[logging.Logger, _Writes, logs.BatchingHandler]:
    stream = _Writes()
    handler = logs.BatchingHandler(stream, delay=delay)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.Logger("batching-test")
    logger.addHandler(handler)
    return logger, stream, handler


def test_lines_logged_on_the_event_loop_go_out_together_within_the_delay():
    logger, stream, _ = _batching()

    async def main() -> list[int]:
        for i in range(50):
            logger.info("call %d", i)
        seen = [len(stream.writes)]
        await asyncio.sleep(0.2)
        seen.append(len(stream.writes))
        return seen

    assert asyncio.run(main()) == [0, 1]
    lines = stream.writes[0].splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"call {i}" for i in range(50)]


def test_errors_lines_off_the_loop_and_flush_do_not_wait_and_keep_the_order():
    logger, stream, handler = _batching(delay=60)

    async def main() -> None:
        logger.info("first")
        logger.error("an error")  # at once, with the line before it
        written = "".join(stream.writes).splitlines()
        assert [json.loads(x)["message"] for x in written] == ["first", "an error"]
        logger.info("waits")
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join()  # no event loop there: at once, after the waiting line
        logger.info("waits too")
        handler.flush()

    asyncio.run(main())
    messages = [json.loads(x)["message"] for x in "".join(stream.writes).splitlines()]
    assert messages == ["first", "an error", "waits", "from a thread", "waits too"]


def test_a_long_batch_goes_out_before_the_delay():
    logger, stream, _ = _batching(delay=60)

    async def main() -> int:
        for _ in range(200):
            logger.info("x" * 1000)
        return len(stream.writes)

    assert asyncio.run(main()) >= 2  # 64 KiB of waiting lines makes the batch go out


_FIELD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=1100),
    st.sampled_from(["", "a\nb", "\x1b[31m", "\u2028", "é" * 1024, "x" * 1025, "中" * 3000]),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["rpc", "vm", "error", "exception", "stack", "zstack_code", "other"]),
        st.one_of(_FIELD_TEXT, st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False)),
        max_size=7,
    ),
    fmt=st.sampled_from(["json", "text"]),
)
def test_the_usual_records_short_path_writes_what_the_field_by_field_path_writes(fields, fmt):
    raw = {"time": "2026-12-05T00:00:00.000+00:00", "level": "INFO", "logger": "l", "message": "m"}
    raw.update(fields)
    render = logs._JsonRender() if fmt == "json" else logs._TextRender()
    assert logs._fit(dict(raw), render) == logs._fit_fields(dict(raw), render)
