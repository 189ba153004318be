"""Upstream faults, one at a time: every way ZStack (or what stands in front of it) can misbehave.

For each fault the caller gets the README's gRPC code, within its deadline plus SLACK, the gateway
logs no unexpected error, and the very next normal call through the same gateway succeeds (the
connection pool survived). Faults come from the simulator's fault injection, or, for what the
simulator cannot do (a listener that never answers, a peer that closes politely mid-answer, a
chunked body without Content-Length), from :class:`RawUpstream`, a tiny HTTP peer on loopback.

The gateway may retry the safe failures (refused, closed before any byte, a proxy's 502/503/504,
SYS.1010/SYS.1012), so these tests assert codes and timing, never upstream request counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import zstack_sim
from calls import deadline_storm
from harness import Gateways, has_traceback
from hostile import RawListener
from statuses import Decoded, decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import wait_until

C = grpc.StatusCode
VM = zstack_sim.DEMO_VM_UUID
AUTH = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)
#: The caller's deadline in these tests, and how late past it an answer may come.
DEADLINE = 0.8
SLACK = 0.25

# ---------------------------------------------------------------------------------------------
# Helpers


def call(stub, vm: str = VM, timeout: float = DEADLINE) -> tuple[Decoded | None, float, int]:
    """One GetCandidateIso: (the decoded error or None, seconds taken, images received)."""
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm)
    started = time.monotonic()
    received = 0
    try:
        for chunk in stub.GetCandidateIso(request, metadata=AUTH, timeout=timeout):
            received += len(chunk.inventories)
    except grpc.RpcError as err:
        return decode(err), time.monotonic() - started, received
    return None, time.monotonic() - started, received


def fail(stub, vm: str = VM, timeout: float = DEADLINE) -> tuple[Decoded, float]:
    d, elapsed, _ = call(stub, vm, timeout)
    assert d is not None, "the call succeeded; a failure was expected"
    assert elapsed < timeout + SLACK, f"answered after {elapsed:.3f} s, deadline {timeout} s"
    return d, elapsed


def assert_normal_call_succeeds(stub, vm: str = VM, images: int | None = None) -> None:
    d, _, received = call(stub, vm, timeout=5.0)
    assert d is None, f"the normal call after the fault failed: {d}"
    if images is not None:
        assert received == images


def gateway_tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records of the gateway's and grpc's loggers that carry a traceback (an exception the
    gateway did not expect), and anything asyncio reported on the gateway's own thread (an
    exception nobody retrieved, a callback that failed). The gateway may log failed calls at ERROR
    without a traceback; those are its business, not an unhandled exception."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and (r.threadName == "gateway" if r.name == "asyncio" else has_traceback(r))
    ]


def assert_no_gateway_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    found = gateway_tracebacks(caplog)
    assert not found, "the gateway logged unexpected exceptions:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}" + (" (with traceback)" if r.exc_info else "") for r in found
    )


def assert_recovered(stub, caplog: pytest.LogCaptureFixture, images: int = 5) -> None:
    """Once the fault is gone: the next normal call through the same gateway succeeds (with
    ``images`` images), and the gateway logged no unexpected exception."""
    assert_normal_call_succeeds(stub, images=images)
    assert_no_gateway_tracebacks(caplog)


@pytest.fixture
def errors_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR)
    return caplog


# ---------------------------------------------------------------------------------------------
# A raw HTTP peer on loopback, for what the simulator cannot do


HOLD = "hold"  # accept, then never read nor write
CLOSE = "close"  # read the request head, then close (FIN) without a byte of answer

GOOD_BODY = b'{"inventories":[{"uuid":"cb2c34a46a753c5ab95807fabbae56af","name":"TinyLinux"}]}'
GOOD_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(GOOD_BODY) + GOOD_BODY
)


class RawUpstream(RawListener):
    """A listener on 127.0.0.1 that answers every connection as ``mode`` says: ``HOLD``, ``CLOSE``,
    or bytes to send as they are before closing the connection."""

    def __init__(self) -> None:
        self.mode: str | bytes = GOOD_ANSWER
        self.held: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == HOLD:
            with self._lock:
                self.held.append(conn)
            return
        threading.Thread(target=self._answer, args=(conn, mode), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket, mode: str | bytes) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                if isinstance(mode, bytes):
                    conn.sendall(mode)
                conn.shutdown(socket.SHUT_WR)
                # Let the client read everything before the socket goes, so it sees a FIN, not a RST.
                while conn.recv(65536):
                    pass

    def held_closed_by_peer(self, timeout: float = 1.0) -> bool:
        """True when the gateway closed every held connection (read what it sent, then EOF)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            held = list(self.held)
        for conn in held:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                conn.settimeout(remaining)
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    return False
                except OSError:
                    break
        return True

    def close(self) -> None:
        self.stop_listening()
        with self._lock:
            for conn in self.held:
                conn.close()
            self.held.clear()


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    upstream = RawUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def raw_gateway(module_gateways: Gateways, raw_upstream: RawUpstream) -> svc_grpc.VmInstanceServiceStub:
    return module_gateways(zstack_url=raw_upstream.url, max_body_bytes=4096).stub


@pytest.fixture
def raw(raw_upstream: RawUpstream) -> Iterator[RawUpstream]:
    raw_upstream.mode = GOOD_ANSWER
    yield raw_upstream
    raw_upstream.mode = GOOD_ANSWER


# ---------------------------------------------------------------------------------------------
# Connection-level faults from the simulator


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        pytest.param({"action": "reset"}, C.UNAVAILABLE, id="reset-before-status-line"),
        pytest.param({"action": "reset_mid_body"}, C.UNAVAILABLE, id="reset-mid-body"),
    ],
)
def test_broken_connection_is_unavailable(stub, sim: SimControl, errors_log, fault, code):
    sim.fault(**fault)
    d, _ = fail(stub)
    assert d.code == code
    assert d.info.reason == "UPSTREAM_UNAVAILABLE"
    sim.clear_faults()
    assert_recovered(stub, errors_log)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"action": "drip", "interval": 0.1}, id="drip-a-byte-every-100ms"),
        pytest.param({"action": "headers_then_silence"}, id="headers-then-silence"),
        pytest.param({"action": "hang"}, id="hang-before-status-line"),
    ],
)
def test_stalled_answer_is_deadline_exceeded_at_the_callers_deadline(
    stub, sim: SimControl, errors_log, fault
):
    sim.fault(**fault)
    d, elapsed = fail(stub)
    assert d.code == C.DEADLINE_EXCEEDED
    assert elapsed >= DEADLINE - 0.05, f"gave up after {elapsed:.3f} s, before the deadline"
    # The stalled upstream request was abandoned, not left running in the pool.
    assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=1.0)
    sim.clear_faults()
    assert_recovered(stub, errors_log)


def test_many_calls_running_out_of_time_together_log_no_tracebacks(
    gateway, stub, sim: SimControl, errors_log
):
    """64 callers at a time whose upstream answers never come (hang, drip), with short deadlines; the
    calls to one VM share upstream requests and queue for upstream slots, so the gateway's own
    timers end right at the callers' deadlines. A status sent for a call that grpc has already ended
    makes grpc log 'ExecuteBatchError raised in core by servicer method' with a traceback."""
    sim.fault(action="hang", path="/vm-instances/fa17")
    sim.fault(action="drip", interval=0.05, path="/vm-instances/fb17")
    vms = ["fa17" + "0" * 28, "fb17" + "0" * 28]
    for _ in range(4):  # the race is timing-dependent: a few storms make it show if it is back
        codes = asyncio.run(deadline_storm(gateway.target, 300, 64, vms, deadline_s=0.3))
        assert set(codes) == {C.DEADLINE_EXCEEDED}, codes
        if gateway_tracebacks(errors_log):
            break
    sim.clear_faults()
    assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=2.0)
    assert_recovered(stub, errors_log)


# ---------------------------------------------------------------------------------------------
# Answers the gateway cannot read


def _deep(levels: int) -> str:
    return '{"inventories": [' + "[" * levels + "]" * levels + "]}"


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        pytest.param({"action": "truncate"}, "not valid JSON", id="truncated-json"),
        pytest.param(
            {"action": "respond", "status": 200, "body": "{not json"}, "not valid JSON", id="invalid-json"
        ),
        pytest.param({"action": "respond", "status": 200, "body": ""}, "not valid JSON", id="empty-body"),
        pytest.param(
            {"action": "respond", "status": 200, "body": '{"total": 3}'}, "inventories", id="no-inventories"
        ),
        pytest.param(
            {"action": "respond", "status": 200, "body": '{"inventories": [{"uuid": "x", "size": "big"}]}'},
            "inventories[0].size",
            id="size-as-string",
        ),
        pytest.param(
            {"action": "respond", "status": 200, "body": '{"inventories": {"uuid": "x"}}'},
            "inventories",
            id="inventories-not-a-list",
        ),
        pytest.param(
            {"action": "respond", "status": 200, "body": '{"inventories": ["an image"]}'},
            "inventories[0]",
            id="image-not-an-object",
        ),
        pytest.param({"action": "respond", "status": 200, "body": "[]"}, "", id="body-a-list"),
        pytest.param({"action": "respond", "status": 200, "body": "null"}, "", id="body-null"),
        pytest.param({"action": "respond", "status": 200, "body": _deep(5000)}, "", id="nested-5000-deep"),
    ],
)
def test_unreadable_answer_is_internal_bad_response(stub, sim: SimControl, errors_log, fault, needle):
    sim.fault(**fault)
    d, _ = fail(stub)
    assert d.code == C.INTERNAL
    assert d.info.reason == "ZSTACK_BAD_RESPONSE"
    assert needle in d.message
    sim.clear_faults()
    assert_recovered(stub, errors_log)


# ---------------------------------------------------------------------------------------------
# HTTP statuses that are not ZStack's JSON


def _html(status: int, title: str) -> str:
    return f"<html><head><title>{status} {title}</title></head><body><center>nginx</center></body></html>"


@pytest.mark.parametrize(
    ("status", "body", "code", "reason"),
    [
        pytest.param(502, _html(502, "Bad Gateway"), C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", id="html-502"),
        pytest.param(
            503, _html(503, "Service Unavailable"), C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", id="html-503"
        ),
        pytest.param(
            504, _html(504, "Gateway Time-out"), C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", id="html-504"
        ),
        pytest.param(400, "Invalid header[X-Job-UUID]", C.INTERNAL, "ZSTACK_BAD_REQUEST", id="text-400"),
        pytest.param(
            400,
            "missing header 'Authorization'",
            C.UNAUTHENTICATED,
            "ZSTACK_REJECTED_CREDENTIALS",
            id="text-400-auth",
        ),
        pytest.param(
            404, "no api mapping to /v1/vm-instances", C.UNIMPLEMENTED, "ZSTACK_API_NOT_FOUND", id="text-404"
        ),
        pytest.param(
            500, "java.lang.NullPointerException", C.INTERNAL, "ZSTACK_INTERNAL_ERROR", id="text-500"
        ),
        pytest.param(
            202,
            '{"location": "http://mn/zstack/v1/api-jobs/x"}',
            C.INTERNAL,
            "ZSTACK_UNEXPECTED_ASYNC_REPLY",
            id="202-on-sync-api",
        ),
    ],
)
def test_non_zstack_status_maps_to_its_code(stub, sim: SimControl, errors_log, status, body, code, reason):
    sim.fault(action="respond", status=status, body=body)
    d, _ = fail(stub)
    assert d.code == code
    assert d.info.reason == reason
    assert d.info.metadata["httpStatus"] == str(status)
    assert "<" not in d.message  # HTML is reduced to its title, never passed on
    sim.clear_faults()
    assert_recovered(stub, errors_log)


# ---------------------------------------------------------------------------------------------
# ZStack's own errors about time and readiness


@pytest.mark.parametrize(
    ("zstack_code", "details", "code"),
    [
        pytest.param(
            "SYS.1001", "the API timed out after 1 s", C.DEADLINE_EXCEEDED, id="timeout-is-deadline-exceeded"
        ),
        pytest.param(
            "SYS.1010",
            "management node[uuid:x] is not ready yet",
            C.UNAVAILABLE,
            id="not-ready-is-unavailable",
        ),
    ],
)
def test_zstack_time_and_readiness_errors(stub, sim: SimControl, errors_log, zstack_code, details, code):
    """ZStack's timeout (under the caller's deadline) and a management node not ready yet: the
    README's code, with ZStack's ErrorCode and reason kept."""
    sim.fault(action="zstack_error", code=zstack_code, details=details)
    d, _ = fail(stub)
    assert d.code == code
    assert d.error_code is not None and d.error_code.code == zstack_code
    assert d.info.reason == "ZSTACK_" + zstack_code.replace(".", "_")
    sim.clear_faults()
    assert_recovered(stub, errors_log)


def test_long_chinese_zstack_error_reaches_the_caller_with_its_code(stub, sim: SimControl, errors_log):
    """ZStack localises its messages; a zh_CN management node writes Chinese details. grpc-message is
    percent-encoded (9 bytes per Chinese character), so the whole trailer, not only the details, must
    stay under the caller's 8 KiB metadata limit, else the caller's grpc refuses it and reports
    RESOURCE_EXHAUSTED instead of NOT_FOUND."""
    sim.fault(action="zstack_error", code="SYS.1003", details="资源未找到，请检查输入" * 200)
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=VM)
    # grpc refuses trailers between its soft and hard limits at random: 20 calls make it certain.
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.GetCandidateIso(request, metadata=AUTH, timeout=DEADLINE))
        assert info.value.code() == C.NOT_FOUND, info.value.details()
    assert decode(info.value).error_code.code == "SYS.1003"
    sim.clear_faults()
    assert_recovered(stub, errors_log)


# ---------------------------------------------------------------------------------------------
# The body size cap


def _padded_body(size: int) -> bytes:
    """A valid empty answer, padded with JSON whitespace to exactly ``size`` bytes."""
    body = b'{"inventories": []}'
    return body + b" " * (size - len(body))


def _with_length(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _chunked(body: bytes, chunk: int = 1000) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + chunk]), body[i : i + chunk]) for i in range(0, len(body), chunk)
    ]
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", [_with_length, _chunked], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("size", "code"),
    [(4096, C.OK), (4097, C.INTERNAL), (64 * 1024, C.INTERNAL)],
    ids=["at-the-cap", "one-byte-over", "64KiB"],
)
def test_body_over_the_cap_is_internal_and_the_pool_survives(
    raw_gateway, raw: RawUpstream, errors_log, framing, size, code
):
    """The raw gateway caps bodies at 4 KiB (--max-body-bytes 4096), with or without a Content-Length."""
    raw.mode = framing(_padded_body(size))
    d, _, received = call(raw_gateway)
    if code == C.OK:
        assert d is None, d
        assert received == 0
    else:
        assert d is not None
        assert d.code == code
        assert d.info.reason == "ZSTACK_BAD_RESPONSE"
        assert "4096" in d.message
    raw.mode = GOOD_ANSWER
    assert_recovered(raw_gateway, errors_log, images=1)


# ---------------------------------------------------------------------------------------------
# Peers the simulator cannot play


def test_connection_refused_is_unavailable_and_the_gateway_recovers(
    raw_gateway, raw: RawUpstream, errors_log
):
    raw.stop_listening()  # nothing listens on ZStack's port
    try:
        d, _ = fail(raw_gateway)
    finally:
        raw.listen()  # ZStack comes back on the same port
    assert d.code == C.UNAVAILABLE
    assert d.info.reason == "UPSTREAM_UNAVAILABLE"
    assert f"127.0.0.1:{raw.port}" in d.message
    assert_recovered(raw_gateway, errors_log, images=1)


def test_listener_that_never_answers_is_deadline_exceeded(raw_gateway, raw: RawUpstream, errors_log):
    raw.mode = HOLD
    d, elapsed = fail(raw_gateway)
    assert d.code == C.DEADLINE_EXCEEDED
    assert elapsed >= DEADLINE - 0.05
    # The gateway gave up on the connection at the deadline: the peer sees it closed.
    assert raw.held_closed_by_peer(timeout=1.0)
    raw.mode = GOOD_ANSWER
    assert_recovered(raw_gateway, errors_log, images=1)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(CLOSE, id="closed-before-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + GOOD_BODY, id="closed-mid-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Len", id="closed-mid-headers"),
    ],
)
def test_connection_closed_early_is_unavailable(raw_gateway, raw: RawUpstream, errors_log, mode):
    raw.mode = mode
    d, _ = fail(raw_gateway)
    assert d.code == C.UNAVAILABLE
    assert d.info.reason == "UPSTREAM_UNAVAILABLE"
    raw.mode = GOOD_ANSWER
    assert_recovered(raw_gateway, errors_log, images=1)


def test_body_that_is_not_utf8_is_internal_bad_response(raw_gateway, raw: RawUpstream, errors_log):
    body = b'{"inventories": [{"uuid": "\xff\xfe", "name": "x"}]}'
    raw.mode = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    d, _ = fail(raw_gateway)
    assert d.code == C.INTERNAL
    assert d.info.reason == "ZSTACK_BAD_RESPONSE"
    raw.mode = GOOD_ANSWER
    assert_recovered(raw_gateway, errors_log, images=1)


def test_garbage_instead_of_http_is_unavailable(raw_gateway, raw: RawUpstream, errors_log):
    """Something that is not an HTTP server on ZStack's port (README: a malformed HTTP answer is a
    broken connection, UNAVAILABLE)."""
    raw.mode = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
    d, _ = fail(raw_gateway)
    assert d.code == C.UNAVAILABLE
    raw.mode = GOOD_ANSWER
    assert_recovered(raw_gateway, errors_log, images=1)
