"""The first images go out while ZStack's answer is still arriving (compiled path).

A 200 answer of GetCandidateIso of 2 MiB or more (or of no announced length) is checked a piece at a
time as it arrives, and the images of the pieces checked are sent at once. Whatever the body turns
out to be, callers get
the messages the whole body gives, byte for byte; a body that turns out malformed, or whose read is
cut, ends the stream with the status the check of the whole body gives, after the images already
sent. Coalesced callers share the arriving stream: a late joiner still gets every image from the
first, a caller that cancels ends no other, and what the answer held goes back to the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import grpc
import orjson
import pytest
import zstack_sim
from conftest import AUTH
from harness import Gateways
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statuses import decode
from test_stream_memory import Upstream, body_of, image, request, uuids
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import errors, stream, translate, wire
from zstack_gateway.budget import MemoryBudget
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port, scrape, wait_until

C = grpc.StatusCode
TZ = ZoneInfo("Asia/Shanghai")

compiled_only = pytest.mark.skipif(wire.PATH != "compiled", reason="the pure path reads the whole body first")


# ---------------------------------------------------------------------------------------------
# The stream fed piece by piece gives what the whole body gives


def whole(body: bytes) -> tuple[list[bytes], tuple[object, ...] | None]:
    """The messages of the whole body, and the error that ends them (code, reason, message)."""
    out: list[bytes] = []
    try:
        for chunk in stream.ImageStream(bytearray(body), TZ).messages():
            out.append(chunk.data)
    except (errors.GatewayError, translate.TranslationError) as exc:
        return out, _error(exc)
    return out, None


def _error(exc: Exception) -> tuple[object, ...]:
    if isinstance(exc, translate.TranslationError):
        return ("translation", exc.field, exc.reason)
    assert isinstance(exc, errors.GatewayError)
    return (exc.code, exc.reason, exc.message)


def arriving(body: bytes, cuts: list[int]) -> tuple[list[bytes], tuple[object, ...] | None]:
    """The messages of ``body`` fed in pieces ending at ``cuts``, read as far as each piece allows."""
    published: list[stream.ImageStream] = []
    arrival = stream.Arrival(TZ, shared_by=None, publish=published.append)
    buffer = bytearray()
    account = MemoryBudget(2**40).account()
    arrival.begin(buffer, account)
    images = published[0]
    reader = images.reader()
    out: list[bytes] = []

    def read_what_came() -> bool:
        while True:
            try:
                out.append(images._read(reader._token).data)
            except stream._NeedMore:
                return True
            except StopIteration:
                return False

    try:
        at = 0
        for cut in [*sorted(cuts), len(body)]:
            buffer += body[at:cut]
            at = max(at, cut)
            while arrival.feed():
                read_what_came()
            read_what_came()
        arrival.finish()
        out.extend(chunk.data for chunk in reader)
    except (errors.GatewayError, translate.TranslationError) as exc:
        return out, _error(exc)
    finally:
        reader.close()
    assert account.held == 0 or not images._closed
    return out, None


SECOND_LIST = (
    C.INTERNAL,
    errors.Reason.ZSTACK_BAD_RESPONSE,
    errors.bad_response("the body has more than one inventories list").message,
)


def assert_same(body: bytes, cuts: list[int]) -> None:
    expected, expected_error = whole(body)
    got, got_error = arriving(body, cuts)
    if got_error == SECOND_LIST and expected_error is None:
        # The one difference (ZStack never sends it): a second "inventories" key, whose list the
        # whole-body check serves, found after images of the first were sent.
        assert got
        return
    assert got_error == expected_error
    if expected_error is None:
        assert got == expected
    else:
        # What was sent before the error is the start of the list's images.
        assert b"".join(got) == b"".join(expected)[: len(b"".join(got))] or not expected


_extra = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_image = st.builds(
    lambda i, description, extra: {**image(i, description), "extra": extra},
    st.integers(0, 10**6),
    st.text(max_size=300),
    _extra,
)


@compiled_only
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.lists(_image, max_size=60),
    indent=st.sampled_from([None, 1]),
    cuts=st.lists(st.integers(0, 40_000), max_size=12),
)
def test_pieces_anywhere_give_the_messages_of_the_whole_body(images, indent, cuts):
    text = orjson.dumps({"inventories": images}, option=orjson.OPT_INDENT_2 if indent else 0)
    assert_same(text, cuts)


@compiled_only
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.lists(_image, min_size=1, max_size=40),
    damage=st.sampled_from(["truncate", "byte", "tail", "second list", "not utf-8", "item"]),
    where=st.floats(0, 1),
    cuts=st.lists(st.integers(0, 30_000), max_size=8),
)
def test_a_body_that_turns_out_malformed_ends_with_the_whole_body_error(images, damage, where, cuts):
    text = orjson.dumps({"inventories": images})
    at = int(where * (len(text) - 1))
    if damage == "truncate":
        text = text[:at]
    elif damage == "byte":
        text = text[:at] + b"\x01" + text[at + 1 :]
    elif damage == "tail":
        text = text[:-1] + b',"x":}'
    elif damage == "second list":
        text = text[:-1] + b',"inventories":[]}'
    elif damage == "not utf-8":
        text = text[:at] + b"\xff" + text[at:]
    else:
        text = text[:-2] + b',{"uuid":5}]}'
    assert_same(text, cuts)


@compiled_only
@pytest.mark.parametrize("depth", [998, 1000, 1002, 1021, 1022, 1024, 5000])
def test_deep_nesting_in_an_item_ends_as_the_whole_body_does(depth):
    """Around the nesting limits of msgspec and orjson, which the check as it arrives and the check
    of the whole body apply with different wrappers."""
    images = [image(i) for i in range(30)]
    body = body_of(images)
    one = body_of([images[20]])[len(b'{"inventories":[') : -2]
    assert one in body
    body = body.replace(one, one[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}")
    for cuts in ([], [3_000], list(range(0, len(body), 700))):
        assert_same(body, cuts)


@compiled_only
def test_an_item_longer_than_every_piece_and_slice():
    images = [image(0), image(1, "d" * 700_000), image(2)] + [image(i) for i in range(3, 40)]
    body = body_of(images)
    assert_same(body, list(range(0, len(body), 5_000)))


# ---------------------------------------------------------------------------------------------
# While the body arrives, a message goes once every present reader took it; a later reader gets it
# rebuilt


def joining(body: bytes, cuts: list[int], joins: list[bool], lags: list[int]) -> list[list[bytes]]:
    """``body`` fed in pieces ending at ``cuts`` to a stream that readers may still join (its task
    lives on); a reader joins before each piece where ``joins`` says so, and each reads up to its
    ``lags`` budget of messages of what came. After each step, every message every present reader
    took is let go. Then the body is whole: every reader reads the rest. The messages of each."""

    async def main() -> list[list[bytes]]:
        published: list[stream.ImageStream] = []
        arrival = stream.Arrival(TZ, shared_by=asyncio.current_task(), publish=published.append)
        buffer = bytearray()
        account = MemoryBudget(2**40).account()
        arrival.begin(buffer, account)
        images = published[0]
        readers: list[tuple[stream.Reader, list[bytes]]] = []

        def read(reader: stream.Reader, out: list[bytes], most: int) -> None:
            for _ in range(most):
                try:
                    out.append(reader._next(images).data)
                except (stream._NeedMore, StopIteration):
                    return

        try:
            at = 0
            for step, cut in enumerate([*sorted(cuts), len(body)]):
                if not readers or joins[step % len(joins)]:
                    readers.append((images.reader(), []))
                buffer += body[at:cut]
                at = max(at, cut)
                while arrival.feed():
                    pass
                for k, (reader, out) in enumerate(readers):
                    read(reader, out, lags[(step + k) % len(lags)])
                below = min(images._readers.values())
                assert all(chunk is None for chunk in images._built[:below]), "a message every reader took"
                assert images._released == below
            arrival.finish()
            for reader, out in readers:
                out.extend(chunk.data for chunk in reader)
        finally:
            for reader, _ in readers:
                reader.close()
        return [out for _, out in readers]

    return asyncio.run(main())


@compiled_only
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 2_500),
    cuts=st.lists(st.floats(0, 1), max_size=12),
    joins=st.lists(st.booleans(), min_size=1, max_size=12),
    lags=st.lists(st.integers(0, 4), min_size=1, max_size=6),
)
def test_readers_joining_an_arriving_stream_get_every_message_and_taken_ones_go(n, cuts, joins, lags):
    body = body_of([image(i, "d" * (i * 389 % 3_000)) for i in range(n)])
    expected, error = whole(body)
    assert error is None
    for out in joining(body, [int(c * len(body)) for c in cuts], joins, lags):
        assert out == expected


# ---------------------------------------------------------------------------------------------
# Through a gateway


class Gated(Upstream):
    """Sends its 200 answer's headers and the first ``first`` bytes of ``body``, then waits for
    ``gate`` before the rest (or sends nothing more when ``cut``: the connection closes)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = 0
        self.gate = threading.Event()
        self.cut = False

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            with self._lock:
                self.requests += 1
            body = self.body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[: self.first])
            self.gate.wait(60)
            if not self.cut:
                conn.sendall(body[self.first :])
                with self._lock:
                    self.answered += 1
                while conn.recv(65536):
                    pass


@pytest.fixture
def gated() -> Iterator[Gated]:
    peer = Gated()
    yield peer
    peer.gate.set()
    peer.stop_listening()


def many(n: int) -> list[dict]:
    return [image(i, "w" * 200) for i in range(n)]


@compiled_only
def test_the_first_message_comes_before_the_body_is_whole(make_gateway: Gateways, gated: Gated):
    images = many(8_000)
    gated.body = body_of(images)
    gated.first = 200_000  # of about 3.3 MB
    gw = make_gateway(zstack_url=gated.url, default_timeout=30)
    with grpc.insecure_channel(gw.target) as ch:
        call = svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(request(), metadata=AUTH, timeout=30)
        first = next(call)  # before this change: nothing until the whole body came
        assert [i.uuid for i in first.inventories] == [i["uuid"] for i in images[:16]]
        gated.gate.set()
        rest = list(call)
    assert uuids([first, *rest]) == [i["uuid"] for i in images]


def test_a_body_cut_after_images_were_sent_ends_with_unavailable(make_gateway: Gateways, gated: Gated):
    images = many(8_000)
    gated.body = body_of(images)
    gated.first = 200_000
    gated.cut = True
    gw = make_gateway(zstack_url=gated.url, default_timeout=30)
    if wire.PATH != "compiled":
        gated.gate.set()  # nothing comes before the whole body: no image to wait for
    received: list[str] = []
    with grpc.insecure_channel(gw.target) as ch, pytest.raises(grpc.RpcError) as info:
        for message in svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(
            request(), metadata=AUTH, timeout=30
        ):
            received += [i.uuid for i in message.inventories]
            gated.gate.set()  # the rest never comes: the connection closes
        gated.gate.set()
    d = decode(info.value)
    assert d.code == C.UNAVAILABLE, d
    assert d.info.reason == "UPSTREAM_UNAVAILABLE"
    assert received == [i["uuid"] for i in images[: len(received)]]
    if wire.PATH == "compiled":
        assert received, "no image before the cut"
    assert gated.requests == 1, "retried after part of the answer was sent"


def test_a_malformed_tail_ends_with_the_whole_body_error_after_the_images(
    make_gateway: Gateways, gated: Gated
):
    images = many(8_000)
    body = body_of(images)[:-2] + b"],x}"
    with pytest.raises(orjson.JSONDecodeError) as parse:
        orjson.loads(body)
    gated.body = body
    gated.first = 200_000
    gw = make_gateway(zstack_url=gated.url, default_timeout=30)
    if wire.PATH != "compiled":
        gated.gate.set()  # nothing comes before the whole body: no image to wait for
    received: list[str] = []
    with grpc.insecure_channel(gw.target) as ch, pytest.raises(grpc.RpcError) as info:
        for message in svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(
            request(), metadata=AUTH, timeout=30
        ):
            received += [i.uuid for i in message.inventories]
            gated.gate.set()
        gated.gate.set()
    d = decode(info.value)
    assert d.code == C.INTERNAL, d
    assert d.info.reason == "ZSTACK_BAD_RESPONSE"
    assert d.message.endswith(f"the body is not valid JSON ({parse.value.msg} at byte {parse.value.pos})"), d
    assert received == [i["uuid"] for i in images[: len(received)]]
    if wire.PATH == "compiled":
        assert received, "no image before the error"


def test_sharers_of_an_arriving_answer_each_get_it_whole(make_gateway: Gateways, gated: Gated):
    """A joins and reads its first message while the body arrives; B joins after that, C joins and
    cancels: A and B get every image, one upstream request, and the budget is back to 0."""
    images = many(8_000)
    gated.body = body_of(images)
    gated.first = 200_000
    metrics_port = free_port()
    gw = make_gateway(zstack_url=gated.url, default_timeout=30, metrics_listen=f"127.0.0.1:{metrics_port}")

    def held() -> float | None:
        return scrape(f"http://127.0.0.1:{metrics_port}/metrics").get("zstack_gateway_held_bytes")

    channels = [
        grpc.insecure_channel(gw.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(3)
    ]
    try:
        stubs = [svc_grpc.VmInstanceServiceStub(ch) for ch in channels]
        a = stubs[0].GetCandidateIso(request(), metadata=AUTH, timeout=30)
        got_a = [next(a)] if wire.PATH == "compiled" else []
        b = stubs[1].GetCandidateIso(request(), metadata=AUTH, timeout=30)
        c = stubs[2].GetCandidateIso(request(), metadata=AUTH, timeout=30)
        if wire.PATH == "compiled":
            next(c)
        c.cancel()
        time.sleep(0.2)
        gated.gate.set()
        with ThreadPoolExecutor(2) as pool:
            rest_a = pool.submit(list, a)
            rest_b = pool.submit(list, b)
            got_a += rest_a.result(timeout=60)
            got_b = rest_b.result(timeout=60)
    finally:
        for ch in channels:
            ch.close()
    expected = [i["uuid"] for i in images]
    assert uuids(got_a) == expected
    assert uuids(got_b) == expected
    assert [m.SerializeToString() for m in got_a] == [m.SerializeToString() for m in got_b]
    assert gated.requests == 1
    assert wait_until(lambda: held() == 0, timeout=5), held()


def test_every_caller_leaving_abandons_the_arriving_answer(make_gateway: Gateways, gated: Gated):
    images = many(8_000)
    gated.body = body_of(images)
    gated.first = 200_000
    metrics_port = free_port()
    gw = make_gateway(zstack_url=gated.url, default_timeout=30, metrics_listen=f"127.0.0.1:{metrics_port}")
    with grpc.insecure_channel(gw.target) as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        call = stub.GetCandidateIso(request(), metadata=AUTH, timeout=30)
        if wire.PATH == "compiled":
            next(call)
        else:
            assert wait_until(lambda: gated.requests == 1, timeout=10)
        call.cancel()
        held = lambda: scrape(f"http://127.0.0.1:{metrics_port}/metrics").get("zstack_gateway_held_bytes")  # noqa: E731
        assert wait_until(lambda: held() == 0, timeout=5), held()
        # A new call starts afresh and gets the whole list.
        gated.gate.set()
        assert uuids(list(stub.GetCandidateIso(request(), metadata=AUTH, timeout=30))) == [
            i["uuid"] for i in images
        ]
    assert gated.requests == 2


# ---------------------------------------------------------------------------------------------
# One caller's deadline never decides another's outcome, while the answer arrives


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[tuple[zstack_sim.ThreadedSimulator, SimControl]]:
    """A simulator whose demo VM has 3,000 ISO candidates (about 3 MB of answer: it streams as it
    arrives)."""
    with zstack_sim.run_in_thread(zstack_sim.generate(3_000)) as sim:
        yield sim, SimControl(sim.url)


@pytest.mark.parametrize("whose", ["the caller's", "the gateway's default"])
def test_a_joiner_with_a_later_deadline_outlives_the_first_callers_deadline(
    make_gateway: Gateways, slow_sim: tuple[zstack_sim.ThreadedSimulator, SimControl], whose: str
):
    """A starts the shared request with a short deadline (its own, or the gateway's default when it
    sets none); B joins while the answer drips in, with a long one. The answer takes longer than A's
    deadline: A ends with DEADLINE_EXCEEDED at its own deadline, B gets every image and OK, from the
    one upstream request."""
    if wire.PATH != "compiled" and whose != "the caller's":
        pytest.skip(
            "the pure path reads answers whole, with no per-caller wait inside a shared read: a first "
            "caller without a deadline of its own may wait for a read a later caller holds"
        )
    sim, control = slow_sim
    control.reset()
    # About 3 MB in 64 KiB pieces, one per 50 ms: the body takes about 2.3 s to arrive.
    control.fault(action="drip", interval=0.05, bytes=64 * 1024, finish=True, times=1)
    caller_sets_it = whose == "the caller's"
    gw = make_gateway(zstack_url=sim.url, default_timeout=30 if caller_sets_it else 0.8)
    req = svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID)
    channels = [
        grpc.insecure_channel(gw.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(2)
    ]
    try:
        a = svc_grpc.VmInstanceServiceStub(channels[0]).GetCandidateIso(
            req, metadata=AUTH, timeout=0.8 if caller_sets_it else None
        )
        got_a = [next(a)] if wire.PATH == "compiled" else []
        b = svc_grpc.VmInstanceServiceStub(channels[1]).GetCandidateIso(req, metadata=AUTH, timeout=30)
        with ThreadPoolExecutor(2) as pool:
            rest_b = pool.submit(list, b)
            with pytest.raises(grpc.RpcError) as info:
                got_a += list(a)
            got_b = rest_b.result(timeout=60)
    finally:
        for ch in channels:
            ch.close()
    assert info.value.code() == C.DEADLINE_EXCEEDED, info.value
    expected = zstack_sim.generate(3_000).vms[zstack_sim.DEMO_VM_UUID].candidates
    assert uuids(got_a) == expected[: len(uuids(got_a))]
    assert uuids(got_b) == expected
    if wire.PATH == "compiled":
        assert len(control.zstack_requests()) == 1, "B started a request of its own"
    else:
        # Nothing is sent before the whole body: B either kept the shared read going or, when it
        # ran out on A's deadline first, started afresh (the coalescer's rule). Either way B is OK.
        assert len(control.zstack_requests()) in (1, 2)
