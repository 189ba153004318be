"""Hostile ZStack error answers: a 503 whose ErrorCode is huge, deep, wide or not UTF-8.

* Whatever its shape, a ZStack error is classified by its code: SYS.1003 is NOT_FOUND after exactly
  one upstream request (never taken for a proxy's page, which would be retried as UNAVAILABLE), and
  the ErrorCode detail carries the code and the first causes.
* Handling such an error never stalls the gateway's event loop: a probe call running meanwhile
  (another VM's GetCandidateIso) answers within SLACK of its normal latency, with one caller and
  with ten identical callers that share one upstream request.

The answers come from :class:`hostile.HostileUpstream`, in front of the simulator: every request
reaches the simulator's request log, which counts them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import zstack_sim
from harness import Gateways, GatewayThread
from hostile import HostileUpstream
from statuses import Decoded, decode
from test_upstream_faults import assert_no_gateway_tracebacks
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import errors, status
from zstack_sim.control_client import SimControl

C = grpc.StatusCode
AUTH = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)
PROBE_VM = zstack_sim.DEMO_VM_UUID
HOSTILE_VM = "badbadbadbadbadbadbadbadbadbad00"
HOSTILE_PATH = f"/zstack/v1/vm-instances/{HOSTILE_VM}/iso-candidates$"
#: How much slower than normal a probe may be while the gateway handles a hostile error.
SLACK = 0.25
TRAILER_LIMIT = 8 * 1024


# ---------------------------------------------------------------------------------------------
# Hostile bodies, built as bytes (not through a JSON encoder, which refuses some of them)


def _error(fields: bytes) -> bytes:
    return b'{"error": {' + fields + b"}}"


def deep_cause(depth: int, details: bytes = b"one level down") -> bytes:
    """Gson's field order: code first, the cause last; ``depth`` causes, each inside the last."""
    level = b'{"code": "SYS.1000", "details": "' + details + b'", "cause": '
    return _error(
        b'"code": "SYS.1003", "description": "Resource not found", "details": "top", "cause": '
        + level * depth
        + b"{}"
        + b"}" * depth
    )


def deep_causes_first(depth: int) -> bytes:
    """ZStack's ErrorCodeList order puts ``causes`` before ``code``: the code comes after the depth."""
    return _error(
        b'"causes": ['
        + b'{"code": "SYS.1000", "causes": [' * depth
        + b"]}" * depth
        + b'], "code": "SYS.1003", "details": "after the causes"'
    )


def with_byte(where: str, byte: bytes = b"\xe9") -> bytes:
    bodies = {
        "details": _error(b'"code": "SYS.1003", "details": "caf' + byte + b' not found"'),
        "description": _error(b'"description": "' + byte + b'", "code": "SYS.1003"'),
        "cause": _error(b'"code": "SYS.1003", "cause": {"code": "SYS.1000", "details": "x' + byte + b'"}'),
        "opaque-key": _error(b'"code": "SYS.1003", "opaque": {"k' + byte + b'": 1}'),
        "deepest-cause": deep_cause(10_000, details=b"l" + byte),
    }
    return bodies[where]


def many_causes(count: int) -> bytes:
    causes = b", ".join(b'{"code": "SYS.1000", "details": "cause %d"}' % i for i in range(count))
    return _error(b'"causes": [' + causes + b'], "code": "SYS.1003", "details": "many causes"')


def huge_details(chars: int, text: str = "x") -> bytes:
    return _error(b'"code": "SYS.1003", "details": "' + (text * chars).encode() + b'"')


def huge_opaque(keys: int) -> bytes:
    entries = b", ".join(b'"k%d": [%d, "v"]' % (i, i) for i in range(keys))
    return _error(b'"code": "SYS.1003", "details": "d", "opaque": {' + entries + b"}")


def deep_opaque(depth: int) -> bytes:
    return _error(b'"opaque": {"a": ' + b"[" * depth + b"]" * depth + b'}, "code": "SYS.1003"')


def odd_values() -> bytes:
    """What orjson refuses and Gson or a Java proxy may write: lone surrogates, NaN, a 5,000-digit
    integer."""
    return _error(
        b'"code": "SYS.1003", "details": "a \\ud800 b", "opaque": {"n": NaN, "big": '
        + b"7" * 5000
        + b', "inf": -Infinity}'
    )


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def gateway(module_gateways: Gateways, upstream: HostileUpstream) -> GatewayThread:
    return module_gateways(zstack_url=upstream.url, default_timeout=20.0)


@pytest.fixture
def stub(gateway: GatewayThread, upstream: HostileUpstream, sim: SimControl) -> Iterator[Any]:
    upstream.clear()
    with gateway.channel() as channel:
        yield svc_grpc.VmInstanceServiceStub(channel)
    upstream.clear()


def call(stub: Any, vm: str, timeout: float = 20.0) -> Decoded | None:
    try:
        for _ in stub.GetCandidateIso(
            svc.GetCandidateIsoRequest(vm_instance_uuid=vm), metadata=AUTH, timeout=timeout
        ):
            pass
    except grpc.RpcError as err:
        return decode(err)
    return None


def hostile_requests(sim: SimControl) -> int:
    return sum(1 for r in sim.requests() if r["path"] == HOSTILE_PATH.rstrip("$"))


def assert_not_found_by_code(d: Decoded | None) -> None:
    assert d is not None, "the call succeeded; NOT_FOUND was expected"
    assert d.code == C.NOT_FOUND, (d.code, d.message[:300])
    assert d.info.reason == "ZSTACK_SYS_1003"
    assert d.info.metadata["zstackCode"] == "SYS.1003"
    assert d.error_code is not None and d.error_code.code == "SYS.1003"
    assert d.details_bin_size < TRAILER_LIMIT


# ---------------------------------------------------------------------------------------------
# Classified by the code, however it is shaped


@pytest.mark.parametrize(
    ("body", "first_causes"),
    [
        pytest.param(deep_cause(10_000), ["SYS.1000", "SYS.1000"], id="cause-chain-10000-deep"),
        pytest.param(deep_cause(1_100), ["SYS.1000", "SYS.1000"], id="cause-chain-1100-deep"),
        pytest.param(deep_cause(100_000), ["SYS.1000", "SYS.1000"], id="cause-chain-100000-deep"),
        pytest.param(deep_causes_first(5_000), [], id="causes-list-5000-deep-before-the-code"),
        pytest.param(deep_opaque(20_000), [], id="opaque-20000-deep-before-the-code"),
        pytest.param(with_byte("details"), [], id="latin1-byte-in-details"),
        pytest.param(with_byte("description"), [], id="latin1-byte-before-the-code"),
        pytest.param(with_byte("cause"), ["SYS.1000"], id="latin1-byte-in-a-cause"),
        pytest.param(with_byte("opaque-key"), [], id="latin1-byte-in-an-opaque-key"),
        pytest.param(with_byte("details", b"\xff\xfe"), [], id="invalid-utf8-pair"),
        pytest.param(
            with_byte("deepest-cause"), ["SYS.1000", "SYS.1000"], id="latin1-byte-10000-causes-deep"
        ),
        pytest.param(odd_values(), [], id="surrogate-nan-and-a-5000-digit-number"),
    ],
)
def test_a_zstack_error_is_classified_by_its_code_whatever_its_shape(
    stub, upstream: HostileUpstream, sim: SimControl, caplog, body: bytes, first_causes: list[str]
):
    upstream.answer(HOSTILE_PATH, 503, body, headers={"Content-Type": "application/json"})
    d = call(stub, HOSTILE_VM)
    assert_not_found_by_code(d)
    assert hostile_requests(sim) == 1, "a ZStack error was retried as if it were a proxy's page"
    assert d is not None and d.error_code is not None
    node = d.error_code
    for code in first_causes:
        assert node.HasField("cause"), "the first causes were lost"
        node = node.cause
        assert node.code == code
    if len(first_causes) > 1:
        # A deep chain is cut, and the cut is said.
        assert "cut by the gateway" in str(d.error_code)
    assert call(stub, PROBE_VM) is None  # the gateway goes on serving
    assert_no_gateway_tracebacks(caplog)


def test_the_cut_error_keeps_what_came_before_the_cut(stub, upstream: HostileUpstream, sim: SimControl):
    """A 10,000-deep chain: the detail keeps the top error's text and the first causes' texts."""
    upstream.answer(HOSTILE_PATH, 503, deep_cause(10_000, details=b"level text"))
    d = call(stub, HOSTILE_VM)
    assert_not_found_by_code(d)
    assert d is not None and d.error_code is not None
    assert d.message.startswith("ZStack SYS.1003: top")
    assert d.error_code.description == "Resource not found"
    assert d.error_code.cause.details == "level text"
    assert d.error_code.cause.cause.details == "level text"


# ---------------------------------------------------------------------------------------------
# No event-loop stalls


def _probe_latencies(stub: Any, until: threading.Event, out: list[float | None]) -> None:
    """Probe calls one after the other until ``until``: each one's latency, or None when it failed."""
    while not until.is_set():
        started = time.monotonic()
        failed = call(stub, PROBE_VM, timeout=30.0)
        out.append(None if failed else time.monotonic() - started)


def _normal_latency(stub: Any) -> float:
    samples = []
    for _ in range(10):
        started = time.monotonic()
        assert call(stub, PROBE_VM) is None
        samples.append(time.monotonic() - started)
    return statistics.median(samples)


HOSTILE_BODIES = {
    "details-10MB": lambda: huge_details(10_000_000),
    "details-3MB-chinese": lambda: huge_details(1_000_000, "资"),
    "causes-100000": lambda: many_causes(100_000),
    "opaque-200000-keys": lambda: huge_opaque(200_000),
    "cause-chain-10000-deep": lambda: deep_cause(10_000),
    "cause-chain-300000-deep": lambda: deep_cause(300_000),
}


@pytest.mark.parametrize("callers", [1, 10], ids=["one-caller", "ten-coalesced-callers"])
@pytest.mark.parametrize("shape", list(HOSTILE_BODIES))
def test_a_hostile_error_does_not_stall_the_event_loop(
    stub, upstream: HostileUpstream, sim: SimControl, caplog, shape: str, callers: int
):
    body = HOSTILE_BODIES[shape]()
    # The answer waits a little, so that every caller joins the one upstream request.
    upstream.answer(HOSTILE_PATH, 503, body, delay=0.3)
    normal = _normal_latency(stub)
    worst: list[float] = []
    for round_number in range(3):
        before = hostile_requests(sim)
        done = threading.Event()
        latencies: list[float | None] = []
        barrier = threading.Barrier(callers)

        def hostile_call(_: int, barrier: threading.Barrier = barrier) -> Decoded | None:
            barrier.wait()
            return call(stub, HOSTILE_VM)

        prober = threading.Thread(target=_probe_latencies, args=(stub, done, latencies))
        prober.start()
        try:
            with ThreadPoolExecutor(callers) as pool:
                results = list(pool.map(hostile_call, range(callers)))
        finally:
            done.set()
            prober.join(60)
        for d in results:
            assert_not_found_by_code(d)
        assert hostile_requests(sim) - before == 1, (
            f"round {round_number}: the callers did not share one request"
        )
        assert latencies, "no probe ran while the gateway handled the error"
        assert None not in latencies, "a probe call failed"
        worst.append(max(t for t in latencies if t is not None))
    assert max(worst) < normal + SLACK, (
        f"a probe took {max(worst):.3f} s (worst of each round: {[round(w, 3) for w in worst]}) "
        f"while the gateway handled the error; normally {normal:.3f} s"
    )
    assert_no_gateway_tracebacks(caplog)


def test_the_status_of_a_shared_error_is_built_once():
    """Coalesced callers share one GatewayError: its status is built for the first and reused, and
    built afresh when a field of the error changes."""
    err = errors.from_http_response(503, many_causes(1000), deadline_sent=False)
    first = status.to_grpc_status(err)
    assert status.to_grpc_status(err) is first
    err.retry_after = 2.0
    again = status.to_grpc_status(err)
    assert again is not first and again.trailing_metadata != first.trailing_metadata
