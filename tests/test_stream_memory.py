"""What a call holds follows the bytes it received, every message fits a default client, and callers
that do not read cannot pin memory.

The memory tests run the gateway as a process of its own (``zstack-gateway``) and read its memory
from /proc: RSS (VmRSS) and its peak (VmHWM) from /proc/PID/status, the peak reset by writing 5 to
/proc/PID/clear_refs, so the callers and the upstream in the test process do not count. ZStack is
:class:`Upstream`, a small HTTP peer on loopback that serves the body a test sets, or announces a
huge Content-Length, sends a few bytes and hangs.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import Gateways, GatewayThread
from hostile import RawListener
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.processes import Proc, free_port, scrape, wait_until

C = grpc.StatusCode
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# A ZStack stand-in on loopback


class Upstream(RawListener):
    """Answers every request with ``body`` (200, with its Content-Length), or, when ``hang`` is set,
    with ``hang`` (raw bytes: a status line, headers and the start of a body) and then nothing, until
    the gateway closes the connection. ``delay`` holds each answer back that many seconds."""

    def __init__(self) -> None:
        self.body = b'{"inventories": []}'
        self.hang: bytes | None = None
        self.delay = 0.0
        self.requests = 0
        self.answered = 0
        self._lock = threading.Lock()
        super().__init__(backlog=256)

    def handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            while True:  # keep-alive: one answer per request head
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                with self._lock:
                    self.requests += 1
                hang, body = self.hang, self.body
                if self.delay:
                    time.sleep(self.delay)
                if hang is not None:
                    conn.sendall(hang)
                    with self._lock:
                        self.answered += 1
                    while conn.recv(65536):  # until the gateway gives up and closes
                        pass
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                with self._lock:
                    self.answered += 1


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    peer = Upstream()
    yield peer
    peer.stop_listening()


# ---------------------------------------------------------------------------------------------
# The gateway as a process of its own


#: The memory tests' gateway: no readiness checks, errors only in its log, no shutdown grace.
QUIET = ("--readiness-interval", "0", "--log-level", "ERROR", "--shutdown-grace", "0")


def steady_rss(gw: Proc, timeout: float = 30.0) -> int:
    """The gateway's RSS once it stops moving (four samples 0.25 s apart within 2 MB)."""
    samples: list[int] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        samples.append(gw.memory())
        if len(samples) >= 4 and max(samples[-4:]) - min(samples[-4:]) < 2 * MiB:
            break
        time.sleep(0.25)
    return samples[-1]


def vm(i: int) -> str:
    """A VM uuid per call: distinct calls are not coalesced."""
    return f"{i:032x}"


def request(i: int = 0) -> svc.GetCandidateIsoRequest:
    return svc.GetCandidateIsoRequest(vm_instance_uuid=vm(i))


def read_all(stub, i: int = 0, timeout: float = 30) -> list[svc.GetCandidateIsoResponse]:
    return list(stub.GetCandidateIso(request(i), metadata=AUTH, timeout=timeout))


# ---------------------------------------------------------------------------------------------
# Bodies


def image(i: int, description: str = "") -> dict:
    return {
        "uuid": f"{i:032x}",
        "name": f"image-{i}.iso",
        "description": description,
        "size": 1000 + i,
        "mediaType": "ISO",
        "format": "iso",
        "createDate": "Jul 22, 2022 11:54:07 AM",
        "backupStorageRefs": [{"id": i, "imageUuid": f"{i:032x}", "installPath": f"/bs/{i}.iso"}],
    }


def body_of(images: list[dict]) -> bytes:
    return json.dumps({"inventories": images}, separators=(",", ":")).encode()


def uuids(messages: list[svc.GetCandidateIsoResponse]) -> list[str]:
    return [img.uuid for m in messages for img in m.inventories]


def assert_message_rules(messages: list[svc.GetCandidateIsoResponse]) -> None:
    """The proto's chunking rules, as a caller sees them."""
    counts = [len(m.inventories) for m in messages]
    assert counts and counts[0] <= 16, counts[:3]
    assert max(counts) <= 512
    sizes = [m.ByteSize() for m in messages]
    assert max(sizes) <= MiB, f"a message of {max(sizes)} bytes, over 1 MiB"
    assert all(counts), "an empty message in a non-empty list"


@pytest.fixture(scope="module")
def demo_like_10k() -> bytes:
    """ZStack's answer for 10,000 demo-like ISO candidates (about 10 MB), from the simulator."""
    with zstack_sim.run_in_thread(zstack_sim.generate(10_000)) as sim:
        url = f"{sim.url}/zstack/v1/vm-instances/{zstack_sim.DEMO_VM_UUID}/iso-candidates"
        req = urllib.request.Request(url, headers={"Authorization": f"OAuth {zstack_sim.DEMO_SESSION_UUID}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read()


# ---------------------------------------------------------------------------------------------
# Memory follows the bytes received


def test_a_huge_content_length_allocates_nothing(gateway_process, upstream: Upstream):
    """16 calls to an upstream that announces 250 MB and sends 18 bytes, then hangs: the gateway's RSS
    grows by what arrived (a few MB of call state), not by what was announced."""
    upstream.hang = b"HTTP/1.1 200 OK\r\nContent-Length: 250000000\r\n\r\n" + b'{"inventories": [{'
    # One session sends all 16 calls: give it every upstream slot (no per-session share).
    flags = ("--max-upstream-calls-per-identity", "16")
    with (
        gateway_process(*QUIET, *flags, zstack_url=upstream.url) as gw,
        grpc.insecure_channel(gw.address) as ch,
    ):
        stub = svc_grpc.VmInstanceServiceStub(ch)
        upstream.hang, normal = None, upstream.body
        read_all(stub, 99)  # warm up: the first call's one-time costs are not growth
        upstream.hang = b"HTTP/1.1 200 OK\r\nContent-Length: 250000000\r\n\r\n" + b'{"inventories": [{'
        base = gw.memory()
        calls = [stub.GetCandidateIso(request(i), metadata=AUTH, timeout=60) for i in range(16)]
        try:
            assert wait_until(lambda: upstream.answered >= 17, timeout=30), upstream.answered
            growth = 0
            for _ in range(10):  # for a second after the bytes came
                time.sleep(0.1)
                growth = max(growth, gw.memory() - base)
        finally:
            for call in calls:
                call.cancel()
        print(f"16 calls announcing 250 MB: RSS growth {growth / MiB:.1f} MiB")
        assert growth < 48 * MiB, f"RSS grew by {growth / MiB:.0f} MiB for 16 x 18 bytes received"
        upstream.hang, upstream.body = None, normal
        read_all(stub, 98)  # the gateway still serves


def test_a_million_empty_images_peak_follows_the_body(gateway_process, upstream: Upstream):
    """1,000,000 ``{}`` images in a 3 MB body: the gateway's peak RSS while streaming them all stays
    within 4 times the body (never a Python object per image, never every message kept)."""
    upstream.body = b'{"inventories":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    with gateway_process(*QUIET, zstack_url=upstream.url) as gw, grpc.insecure_channel(gw.address) as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        read_all(stub, 99, timeout=120)  # warm up
        base = gw.memory()
        gw.reset_peak()
        messages = 0
        images = 0
        for message in stub.GetCandidateIso(request(1), metadata=AUTH, timeout=120):
            messages += 1
            images += len(message.inventories)
        growth = gw.memory("VmHWM") - base
    print(
        f"1,000,000 empty images: peak RSS growth {growth / MiB:.1f} MiB, "
        f"{growth / len(upstream.body):.2f}x the body"
    )
    assert images == 1_000_000
    assert messages == 1 + (1_000_000 - 16 + 511) // 512  # 16, then 512 a message
    assert growth < 4 * len(upstream.body), (
        f"peak RSS grew by {growth / MiB:.1f} MiB for a {len(upstream.body) / MiB:.1f} MiB body"
    )


def test_streams_nobody_reads_hold_about_their_body(
    gateway_process, upstream: Upstream, demo_like_10k: bytes
):
    """40 callers open a 10,000-image list (10 MB) and never read: each holds about its body (the
    messages grpc already took are let go), not the parsed list; a normal call meanwhile succeeds."""
    upstream.body = demo_like_10k
    streams = 40
    with gateway_process(*QUIET, zstack_url=upstream.url) as gw:
        channels = [
            grpc.insecure_channel(gw.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(4)
        ]
        try:
            stubs = [svc_grpc.VmInstanceServiceStub(ch) for ch in channels]
            read_all(stubs[0], 99)  # warm up
            base = steady_rss(gw)
            calls = [
                stubs[i % 4].GetCandidateIso(request(i), metadata=AUTH, timeout=120) for i in range(streams)
            ]
            try:
                assert wait_until(lambda: upstream.answered >= streams + 1, timeout=30), upstream.answered
                growth = steady_rss(gw) - base
                normal = read_all(stubs[0], 98, timeout=60)
            finally:
                for call in calls:
                    call.cancel()
        finally:
            for ch in channels:
                ch.close()
    per_stream = growth / streams
    print(
        f"{streams} unread streams: RSS growth {growth / MiB:.0f} MiB, "
        f"{per_stream / len(demo_like_10k):.2f}x the body each"
    )
    assert sum(len(m.inventories) for m in normal) == 10_000
    assert per_stream < 1.5 * len(demo_like_10k), (
        f"each unread stream holds {per_stream / MiB:.1f} MiB for a {len(demo_like_10k) / MiB:.1f} MiB body"
    )


# ---------------------------------------------------------------------------------------------
# Every message fits a default client


@pytest.fixture
def gateway(make_gateway: Gateways, upstream: Upstream) -> GatewayThread:
    return make_gateway(zstack_url=upstream.url, default_timeout=30)


def test_small_images_then_large_ones_reach_a_default_client(upstream: Upstream, gateway: GatewayThread):
    """9,000 small images, then 1,000 with 10 KB descriptions: sized from the average image, messages
    of the large ones grew past 4 MiB, a default client's limit. Every image arrives, in order."""
    images = [image(i) for i in range(9_000)] + [image(i, "d" * 10_000) for i in range(9_000, 10_000)]
    upstream.body = body_of(images)
    with grpc.insecure_channel(gateway.target) as ch:  # default options: 4 MiB receive limit
        messages = read_all(svc_grpc.VmInstanceServiceStub(ch))
    assert uuids(messages) == [i["uuid"] for i in images]
    assert_message_rules(messages)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_description_sizes_keep_every_message_within_1_mib(
    upstream: Upstream, gateway: GatewayThread, seed: int
):
    """Runs of images whose descriptions are drawn from 0 bytes to 300 KB: every message is at most
    1 MiB, the rules hold, and the list arrives whole and in order."""
    rng = random.Random(seed)
    images: list[dict] = []
    while len(images) < 1_500:
        top = rng.choice((40, 2_000, 20_000, 300_000))
        images += [image(len(images) + k, "x" * rng.randrange(top)) for k in range(rng.randrange(1, 200))]
    upstream.body = body_of(images)
    with grpc.insecure_channel(gateway.target) as ch:
        messages = read_all(svc_grpc.VmInstanceServiceStub(ch))
    assert uuids(messages) == [i["uuid"] for i in images]
    assert_message_rules(messages)


def test_an_image_over_1_mib_ends_the_stream_after_the_images_before_it(
    upstream: Upstream, gateway: GatewayThread
):
    images = [image(i) for i in range(20)] + [image(20, "x" * 2_000_000)] + [image(i) for i in range(21, 26)]
    upstream.body = body_of(images)
    received: list[str] = []
    with grpc.insecure_channel(gateway.target) as ch, pytest.raises(grpc.RpcError) as info:
        for message in svc_grpc.VmInstanceServiceStub(ch).GetCandidateIso(
            request(), metadata=AUTH, timeout=30
        ):
            received += [img.uuid for img in message.inventories]
    d = decode(info.value)
    assert d.code == C.RESOURCE_EXHAUSTED, d
    assert d.info.reason == "IMAGE_TOO_LARGE"
    assert "inventories[20]" in d.message
    assert received == [i["uuid"] for i in images[:20]]


# ---------------------------------------------------------------------------------------------
# The memory budget


def test_the_budget_refuses_calls_that_would_pass_it_and_is_released_when_calls_end(
    make_gateway: Gateways, upstream: Upstream
):
    """--max-held-bytes 3.5 MB: two answers stalled after 1.5 MB each hold 3 MB, so a call whose 1 MB
    answer would pass the budget fails with RESOURCE_EXHAUSTED GATEWAY_MEMORY_BUDGET and RetryInfo.
    Once calls end (cancelled, failed mid-stream, or read to the end), the held-bytes gauge is 0."""
    stalled = 1_500_000
    images = [image(i, "y" * 800) for i in range(1_000)]
    normal = body_of(images)
    metrics_port = free_port()
    gw = make_gateway(
        zstack_url=upstream.url,
        default_timeout=30,
        max_held_bytes=3_500_000,
        metrics_listen=f"127.0.0.1:{metrics_port}",
    )

    def held() -> float:
        value = scrape(f"http://127.0.0.1:{metrics_port}/metrics").get("zstack_gateway_held_bytes")
        assert value is not None, "no zstack_gateway_held_bytes gauge"
        return value

    with grpc.insecure_channel(gw.target) as ch:
        stub = svc_grpc.VmInstanceServiceStub(ch)
        upstream.body = normal
        assert len(uuids(read_all(stub, 50))) == 1_000
        assert wait_until(lambda: held() == 0, timeout=5), held()
        upstream.hang = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (3 * stalled) + b" " * stalled
        calls = [stub.GetCandidateIso(request(i), metadata=AUTH, timeout=30) for i in (1, 2)]
        try:
            assert wait_until(lambda: held() == 2 * stalled, timeout=10), held()
            upstream.hang = None
            with pytest.raises(grpc.RpcError) as info:
                read_all(stub, 3)
            d = decode(info.value)
            assert d.code == C.RESOURCE_EXHAUSTED, d
            assert d.info.reason == "GATEWAY_MEMORY_BUDGET"
            assert "--max-held-bytes" in d.message
            status = rpc_status.from_call(info.value)
            assert status is not None
            assert any(detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in status.details)
            assert held() == 2 * stalled  # the refused call released what it had read
        finally:
            for call in calls:
                call.cancel()
        assert wait_until(lambda: held() == 0, timeout=5), held()
        # A call ending with an error mid-stream releases what it held.
        upstream.body = body_of([image(i) for i in range(30)] + [{"uuid": 5}])
        with pytest.raises(grpc.RpcError) as info:
            read_all(stub, 4)
        assert decode(info.value).info.reason == "ZSTACK_BAD_RESPONSE"
        assert wait_until(lambda: held() == 0, timeout=5), held()
        # And so do a stream read halfway then cancelled, and one read to its end.
        upstream.body = normal
        call = stub.GetCandidateIso(request(6), metadata=AUTH, timeout=30)
        next(call)
        call.cancel()
        assert len(uuids(read_all(stub, 5))) == 1_000
        assert wait_until(lambda: held() == 0, timeout=5), held()


# ---------------------------------------------------------------------------------------------
# Coalesced callers


def test_coalesced_callers_read_identical_complete_streams(upstream: Upstream, gateway: GatewayThread):
    """12 identical calls share one upstream request; fast, slow and late readers each get every
    message, byte for byte the same, though a message every reader took is let go."""
    images = [
        image(i, "z" * rng_len) for i, rng_len in enumerate(random.Random(7).choices(range(3000), k=3000))
    ]
    upstream.body = body_of(images)
    upstream.delay = 2.0  # the calls all arrive while the first one waits for ZStack
    callers = 12

    def one(k: int) -> list[bytes]:
        with grpc.insecure_channel(gateway.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = svc_grpc.VmInstanceServiceStub(ch)
            got = []
            for message in stub.GetCandidateIso(request(), metadata=AUTH, timeout=30):
                if k % 3 == 1 and not got:
                    time.sleep(0.3)  # a late reader
                if k % 3 == 2:
                    time.sleep(0.01)  # a slow reader
                got.append(message.SerializeToString())
            return got

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(one, range(callers)))
    assert upstream.requests == 1
    first = results[0]
    assert all(r == first for r in results)
    messages = [svc.GetCandidateIsoResponse.FromString(b) for b in first]
    assert uuids(messages) == [i["uuid"] for i in images]
    assert_message_rules(messages)
