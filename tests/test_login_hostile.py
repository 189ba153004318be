"""Account mode against a hostile login: whatever ``PUT /zstack/v1/accounts/login`` answers (bad or
deep JSON, the wrong shape, ZStack's errors, a proxy's pages, plain text, a reset, no answer, nothing
listening), the gateway

* never crashes or exits (also when the login happens at start, for health), and logs no traceback;
* gives callers a clear status: UNAUTHENTICATED for a rejected account, UNAVAILABLE
  (ZSTACK_LOGIN_FAILED) for ZStack or transport trouble, INTERNAL (ZSTACK_BAD_RESPONSE) for an answer
  it cannot read;
* backs off: calls during the failure, one after the other or all at once, cause one login (the
  login endpoint's request log counts them), and the next login comes only after 5 s, then 10 s.

The login endpoint is played by :class:`hostile.HostileUpstream`; everything else goes to the
simulator through it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import zstack_sim
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from harness import Gateways, GatewayThread, account, has_traceback
from hostile import HANG, RESET, HostileUpstream
from statuses import Decoded, decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port

C = grpc.StatusCode
VM = zstack_sim.DEMO_VM_UUID
LOGIN = "^/zstack/v1/accounts/login$"
ISO = r"^/zstack/v1/vm-instances/[0-9a-f]{32}/iso-candidates$"
JSON = {"Content-Type": "application/json"}


def _zstack_error(code: str, details: bytes) -> bytes:
    return b'{"error": {"code": "%s", "details": "%s"}}' % (code.encode(), details)


def _deep_cause(depth: int) -> bytes:
    return (
        b'{"error": {"code": "SYS.1000", "details": "internal", "cause": '
        + b'{"code": "SYS.1001", "cause": ' * depth
        + b"{}"
        + b"}" * depth
        + b"}}"
    )


UNREADABLE = C.INTERNAL, "ZSTACK_BAD_RESPONSE"
TROUBLE = C.UNAVAILABLE, "ZSTACK_LOGIN_FAILED"
REJECTED = C.UNAUTHENTICATED, "ZSTACK_ACCOUNT_REJECTED"

#: How the login endpoint answers -> what callers get.
LOGIN_FAULTS = {
    "200-not-json": ({"status": 200, "body": b"{not json"}, UNREADABLE),
    "200-empty": ({"status": 200, "body": b""}, UNREADABLE),
    "200-deep-json": (
        {"status": 200, "body": b'{"inventory": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
        UNREADABLE,
    ),
    "200-deep-json-after-the-uuid": (
        {
            "status": 200,
            "body": b'{"inventory": {"uuid": "0123456789abcdef0123456789abcdef", "x": '
            + b"{" * 5000
            + b"}" * 5000
            + b"}}",
        },
        UNREADABLE,
    ),
    "200-a-list": ({"status": 200, "body": b"[]"}, UNREADABLE),
    "200-inventory-a-string": ({"status": 200, "body": b'{"inventory": "x"}'}, UNREADABLE),
    "200-uuid-a-number": ({"status": 200, "body": b'{"inventory": {"uuid": 5}}'}, UNREADABLE),
    "200-uuid-with-spaces": ({"status": 200, "body": b'{"inventory": {"uuid": "a b"}}'}, UNREADABLE),
    "200-latin1-byte": ({"status": 200, "body": b'{"inventory": {"uuid": "caf\xe9"}}'}, UNREADABLE),
    "200-over-1MiB": (
        {"status": 200, "body": b'{"inventory": {"uuid": "' + b"a" * 2_000_000 + b'"}}'},
        UNREADABLE,
    ),
    "503-SYS.1000": ({"status": 503, "body": _zstack_error("SYS.1000", b"boom"), "headers": JSON}, TROUBLE),
    "503-SYS.1012": (
        {"status": 503, "body": _zstack_error("SYS.1012", b"mn gone"), "headers": JSON},
        TROUBLE,
    ),
    "503-cause-10000-deep": ({"status": 503, "body": _deep_cause(10_000)}, TROUBLE),
    "503-latin1-byte": ({"status": 503, "body": _zstack_error("SYS.1000", b"caf\xe9")}, TROUBLE),
    "503-html": ({"status": 503, "body": b"<html><title>503 Service Unavailable</title></html>"}, TROUBLE),
    "502-empty": ({"status": 502, "body": b""}, TROUBLE),
    "500-plain-text": ({"status": 500, "body": b"java.lang.NullPointerException"}, TROUBLE),
    "404-plain-text": ({"status": 404, "body": b"no api mapping"}, TROUBLE),
    "403-plain-text": ({"status": 403, "body": b"Forbidden"}, TROUBLE),
    "reset": ({"action": RESET}, TROUBLE),
    "no-answer": ({"action": HANG}, TROUBLE),
    "ID.1000-rejected": (
        {"status": 503, "body": _zstack_error("ID.1000", b"wrong account name or password")},
        REJECTED,
    ),
}

#: Login timeout in these tests: min(10 s, --default-timeout).
LOGIN_TIMEOUT = 1.5


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def make_gateway(make_gateway: Gateways, upstream: HostileUpstream, sim: SimControl) -> Iterator[Gateways]:
    """make_gateway(**config) -> GatewayThread in account mode in front of the hostile upstream."""
    upstream.clear()
    make_gateway.defaults.update(account(zstack_url=upstream.url, default_timeout=LOGIN_TIMEOUT))
    yield make_gateway
    upstream.clear()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="zstack_gateway")
    return caplog


def call(stub: Any, timeout: float = 10.0) -> Decoded | None:
    try:
        for _ in stub.GetCandidateIso(svc.GetCandidateIsoRequest(vm_instance_uuid=VM), timeout=timeout):
            pass
    except grpc.RpcError as err:
        return decode(err)
    return None


def retry_delay(err: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def fail_with_retry(stub: Any) -> tuple[Decoded, float | None]:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GetCandidateIso(svc.GetCandidateIsoRequest(vm_instance_uuid=VM), timeout=10.0))
    return decode(info.value), retry_delay(info.value)


def burst(stub: Any, n: int) -> list[Decoded | None]:
    barrier = threading.Barrier(n)

    def one(_: int) -> Decoded | None:
        barrier.wait()
        return call(stub)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    found = [r for r in caplog.records if has_traceback(r) or r.name == "asyncio"]
    assert not found, [f"{r.name}: {r.getMessage()[:200]}" for r in found]


def assert_status(d: Decoded | None, expected: tuple[grpc.StatusCode, str]) -> None:
    assert d is not None, "the call succeeded; a login failure was expected"
    assert (d.code, d.info.reason) == expected, d.message[:300]
    assert len(d.message) < 1500 and "Traceback" not in d.message


def health(gw: GatewayThread) -> int:
    with gw.channel() as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


# ---------------------------------------------------------------------------------------------
# Every kind of failure: a clear status, one login for many calls, no traceback


@pytest.mark.parametrize("fault", list(LOGIN_FAULTS))
def test_a_failing_login_gives_a_clear_status_and_one_login_for_many_calls(
    make_gateway, upstream: HostileUpstream, sim: SimControl, logs, fault: str
):
    answer, expected = LOGIN_FAULTS[fault]
    # The login answers after a moment, so that the first burst of calls waits for it together.
    upstream.answer(LOGIN, forward=False, delay=0.2, **answer)
    gw = make_gateway()
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        started = time.monotonic()
        results = burst(stub, 8)  # all at once, before any login
        results += [call(stub) for _ in range(6)]  # one after the other, during the back-off
        results += burst(stub, 8)
        elapsed = time.monotonic() - started
    for d in results:
        assert_status(d, expected)
    assert len({d.message for d in results if d is not None}) == 1
    # One login for 22 calls, unless a busy machine made them outlast the first back-off (1 s for
    # ZStack trouble, 5 s for a rejected or unreadable answer; then it doubles). aiohttp sends a PUT
    # once more when the connection is reset: one login is then two requests.
    first = 1.0 if expected == TROUBLE else 5.0
    windows = 1 + sum(elapsed > first * (2**k - 1) for k in (1, 2, 3))
    per_login = 2 if answer.get("action") == RESET else 1
    assert per_login <= upstream.requests(LOGIN) <= windows * per_login, (elapsed, upstream.requests(LOGIN))
    assert not sim.zstack_requests()  # no call went to ZStack without a session
    assert health(gw) == health_pb2.HealthCheckResponse.SERVING  # readiness is off: the process lives
    assert_no_tracebacks(logs)


def test_nothing_listening_for_the_login_is_unavailable_with_one_login(make_gateway, logs):
    gw = make_gateway(zstack_url=f"http://127.0.0.1:{free_port()}")
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        results = burst(stub, 8) + [call(stub) for _ in range(6)]
    for d in results:
        assert_status(d, TROUBLE)
        assert d is not None and "cannot connect" in d.message
    assert gw.gateway.client.credentials.logins == 1  # type: ignore[attr-defined]
    assert_no_tracebacks(logs)


# ---------------------------------------------------------------------------------------------
# At start (readiness logs in for health) and on a re-login


@pytest.mark.parametrize(
    "fault", ["200-deep-json", "200-not-json", "503-SYS.1000", "reset", "ID.1000-rejected"]
)
def test_a_failing_login_at_start_does_not_stop_the_gateway(
    make_gateway, upstream: HostileUpstream, logs, fault: str
):
    answer, expected = LOGIN_FAULTS[fault]
    upstream.answer(LOGIN, forward=False, **answer)
    gw = make_gateway(readiness_interval=60)  # logs in at start, for health
    assert health(gw) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "logging in" in (gw.gateway.readiness.last_problem or "") or expected == REJECTED  # type: ignore[union-attr]
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        for _ in range(5):
            assert_status(call(stub), expected)
    assert upstream.requests(LOGIN) == (2 if answer.get("action") == RESET else 1)
    assert_no_tracebacks(logs)


@pytest.mark.parametrize("fault", ["200-deep-json", "200-uuid-a-number", "503-SYS.1000", "no-answer"])
def test_a_failing_re_login_fails_the_calls_cleanly_with_one_login(
    make_gateway, upstream: HostileUpstream, sim: SimControl, logs, fault: str
):
    answer, expected = LOGIN_FAULTS[fault]
    gw = make_gateway()
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        assert call(stub) is None  # a good login, through to the simulator
        [session] = {
            r["headers"]["Authorization"].removeprefix("OAuth ")
            for r in sim.zstack_requests()
            if "iso" in r["path"]
        }
        sim.expire_session(session)
        upstream.answer(LOGIN, forward=False, **answer)
        results = [call(stub) for _ in range(4)] + burst(stub, 8)
    for d in results:
        assert_status(d, expected)
    assert upstream.requests(LOGIN) == 2  # the first login, then one failed login again
    assert upstream.requests(ISO) == 2  # the good call, then the one that found the session expired
    assert_no_tracebacks(logs)


# ---------------------------------------------------------------------------------------------
# The back-off: for ZStack trouble 1 s, then 2 s (a rejected account: 5 s, then 10 s); and the
# gateway recovers once the login works


def test_the_back_off_doubles_and_says_when_to_try_again(make_gateway, upstream: HostileUpstream, logs):
    upstream.answer(LOGIN, forward=False, **LOGIN_FAULTS["503-SYS.1000"][0])
    gw = make_gateway()
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        started = time.monotonic()
        d, delay = fail_with_retry(stub)
        assert_status(d, TROUBLE)
        assert delay is not None and 0.5 < delay <= 1.0
        _, later = fail_with_retry(stub)
        assert later is not None and later < delay  # the time left of the same back-off
        time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
        d, delay = fail_with_retry(stub)  # the back-off is over: one more login, which fails
        assert_status(d, TROUBLE)
        assert delay is not None and 1.5 < delay <= 2.0
        assert upstream.requests(LOGIN) == 2
    assert_no_tracebacks(logs)


def test_the_gateway_recovers_once_the_login_works_again(
    make_gateway, upstream: HostileUpstream, sim: SimControl, logs
):
    upstream.answer(LOGIN, forward=False, **LOGIN_FAULTS["200-deep-json"][0])
    gw = make_gateway()
    with gw.channel() as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        started = time.monotonic()
        assert_status(call(stub), UNREADABLE)
        upstream.clear()  # the login works again (the simulator answers it)
        assert_status(call(stub), UNREADABLE)  # still within the back-off
        time.sleep(max(0.0, 5.2 - (time.monotonic() - started)))
        assert call(stub) is None
        assert call(stub) is None
    assert upstream.requests(LOGIN) == 1  # the log was cleared with the rule: the one good login
    assert_no_tracebacks(logs)
