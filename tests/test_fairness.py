"""Fairness between identities for upstream slots (--max-upstream-calls-per-identity).

In pass-through mode an identity is one ZStack session. Callers of one session whose upstream
requests hang hold at most their share of the upstream slots: another session's calls still get
slots at once, and the greedy session's extra calls fail with RESOURCE_EXHAUSTED
UPSTREAM_IDENTITY_LIMIT and a RetryInfo. Calls cancelled at any moment (waiting for their share,
waiting for a global slot, or holding both) give back exactly what they took, and the per-identity
bookkeeping empties once no call is left.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from harness import GatewayThread, account
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config, ConfigError, cli, errors
from zstack_gateway.auth import CallerAuth, PassThrough
from zstack_gateway.deadline import Deadline
from zstack_gateway.upstream import ZStackClient
from zstack_gateway.validation import CandidateIsoQuery
from zstack_sim.control_client import SimControl
from zstack_sim.processes import wait_until

C = grpc.StatusCode
HEALTHY_VM = zstack_sim.DEMO_VM_UUID
HANGING_VM = zstack_sim.DEMO_STOPPED_VM_UUID
SLOW_VM = zstack_sim.DEMO_EMPTY_VM_UUID


def iso_path(vm: str) -> str:
    return f"^/zstack/v1/vm-instances/{vm}/iso-candidates$"


def login(simulator: zstack_sim.ThreadedSimulator) -> str:
    """A new session of the demo account, through ZStack's login API on the simulator."""
    password = hashlib.sha512(zstack_sim.DEMO_ACCOUNT_PASSWORD.encode()).hexdigest()
    body = {"logInByAccount": {"accountName": zstack_sim.DEMO_ACCOUNT_NAME, "password": password}}
    req = urllib.request.Request(
        simulator.url + "/zstack/v1/accounts/login",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        session: str = json.loads(resp.read())["inventory"]["uuid"]
    return session


def auth(session: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"OAuth {session}"),)


def images(stub: svc_grpc.VmInstanceServiceStub, metadata: Any, vm: str, timeout: float = 10.0) -> list[str]:
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm)
    return [
        i.uuid
        for c in stub.GetCandidateIso(request, metadata=metadata, timeout=timeout)
        for i in c.inventories
    ]


def tagged_images(stub: svc_grpc.VmInstanceServiceStub, session: str, vm: str, i: int) -> list[str]:
    """A call that shares no upstream request with another (its own system tag)."""
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm, system_tags=[f"fairness-call-{i}"])
    return [
        i.uuid
        for c in stub.GetCandidateIso(request, metadata=auth(session), timeout=10)
        for i in c.inventories
    ]


def requests_to(sim: SimControl, vm: str) -> int:
    return sum(1 for r in sim.zstack_requests() if f"/vm-instances/{vm}/" in r["path"])


@pytest.fixture(scope="module")
def simulator() -> Iterator[zstack_sim.ThreadedSimulator]:
    """This module's own simulator: the tests read its in-flight figures, which must count no other
    gateway's requests (the shared gateway's readiness checks)."""
    with zstack_sim.run_in_thread(zstack_sim.demo_data()) as sim:
        yield sim


def shares_in_use(gw: GatewayThread) -> int:
    return int(gw.run(lambda: gw.gateway.client.identities_queued_or_in_flight))


# --- one greedy session on a hanging VM -------------------------------------------------------------


def test_a_session_on_a_hanging_vm_cannot_take_the_slots_of_another(make_gateway, simulator, sim: SimControl):
    """Defaults: 16 upstream slots, 8 per identity. Session A sends 40 calls to a VM whose requests
    hang; session B's calls to a healthy VM all succeed while they hang, and A's calls beyond its
    share fail with UPSTREAM_IDENTITY_LIMIT once the queue timeout is over."""
    queue_timeout = 2.0
    gw = make_gateway(coalesce=False, upstream_queue_timeout=queue_timeout)
    stub = gw.stub
    assert gw.gateway.client.max_per_identity == 8
    session_b = login(simulator)
    sim.fault(action="hang", path=iso_path(HANGING_VM))

    greedy = 40
    with ThreadPoolExecutor(greedy + 16) as pool:
        calls = [
            stub.GetCandidateIso(
                svc.GetCandidateIsoRequest(vm_instance_uuid=HANGING_VM), metadata=AUTH, timeout=20
            )
            for _ in range(greedy)
        ]

        def outcome(call: Any) -> Any:
            try:
                return list(call)
            except grpc.RpcError as exc:
                return exc

        a_futures = [pool.submit(outcome, call) for call in calls]
        try:
            # A's share of requests reaches ZStack and hangs there (all 16 slots on the old code).
            assert wait_until(lambda: requests_to(sim, HANGING_VM) >= 8, timeout=10)
            time.sleep(0.2)
            hanging = requests_to(sim, HANGING_VM)

            def b_call(_: int) -> tuple[Any, float]:
                started = time.monotonic()
                try:
                    result: Any = images(stub, auth(session_b), HEALTHY_VM, timeout=10)
                except grpc.RpcError as exc:
                    result = exc
                return result, time.monotonic() - started

            b_results = list(pool.map(b_call, range(16)))
            failed_b = [decode(r).info.reason for r, _ in b_results if isinstance(r, grpc.RpcError)]
            assert failed_b == [], f"session B refused while session A hangs: {failed_b}"
            assert all(len(r) == 5 for r, _ in b_results)
            slowest_b = max(t for _, t in b_results)
            print(f"session B: 16 calls, slowest {slowest_b:.3f} s; session A requests upstream: {hanging}")
            # Promptly: none waited for A's calls to give up their places in the queue.
            assert slowest_b < queue_timeout / 2

            # A's calls beyond its share end with RESOURCE_EXHAUSTED after the queue timeout.
            assert wait_until(
                lambda: sum(f.done() for f in a_futures) >= greedy - 8, timeout=queue_timeout + 8
            )
            time.sleep(0.2)
            ended = [f.result() for f in a_futures if f.done()]
            assert len(ended) == greedy - 8
            for exc in ended:
                assert isinstance(exc, grpc.RpcError)
                d = decode(exc)
                assert d.code == C.RESOURCE_EXHAUSTED
                assert d.info.reason == "UPSTREAM_IDENTITY_LIMIT"
                assert "--max-upstream-calls-per-identity" in d.message
                status = rpc_status.from_call(exc)
                assert status is not None
                assert any(x.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for x in status.details)
            assert hanging == 8
        finally:
            for call in calls:
                call.cancel()
    # Every call gone: the per-identity bookkeeping is empty and ZStack's hanging requests were abandoned.
    assert wait_until(lambda: shares_in_use(gw) == 0, timeout=10)
    assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=10)
    assert requests_to(sim, HANGING_VM) == 8


def test_the_global_cap_still_holds_with_many_sessions(make_gateway, simulator, sim: SimControl):
    """Three sessions with a share of 3 each but 4 slots in all: ZStack never sees more than 4
    requests at once, and a call that finds every global slot busy gets UPSTREAM_CONCURRENCY_LIMIT
    (not the identity reason: its own share had room)."""
    gw = make_gateway(
        coalesce=False, max_upstream_calls=4, max_upstream_calls_per_identity=3, upstream_queue_timeout=0.5
    )
    stub = gw.stub
    sessions = [zstack_sim.DEMO_SESSION_UUID, login(simulator), login(simulator)]
    sim.fault(action="hang", path=iso_path(HANGING_VM))
    calls = [
        stub.GetCandidateIso(
            svc.GetCandidateIsoRequest(vm_instance_uuid=HANGING_VM),
            metadata=auth(sessions[i % 2]),
            timeout=20,
        )
        for i in range(4)
    ]
    try:
        assert wait_until(lambda: sim.stats()["in_flight"] == 4, timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            images(stub, auth(sessions[2]), HEALTHY_VM)
        d = decode(info.value)
        assert d.code == C.RESOURCE_EXHAUSTED
        assert d.info.reason == "UPSTREAM_CONCURRENCY_LIMIT"
        assert sim.stats()["in_flight_peak"] == 4
    finally:
        for call in calls:
            call.cancel()
    assert wait_until(lambda: shares_in_use(gw) == 0, timeout=10)
    assert images(stub, auth(sessions[2]), HEALTHY_VM)


def test_account_mode_has_one_identity_and_no_share(make_gateway, sim: SimControl):
    """In account mode every call acts as the gateway's one account: a share would only lower the
    total, so all --max-upstream-calls slots serve its calls."""
    gw = make_gateway(**account(coalesce=False, max_upstream_calls=6, upstream_queue_timeout=0.2))
    stub = gw.stub
    assert gw.gateway.client.max_per_identity == 0
    assert images(stub, (), HEALTHY_VM)  # logs in
    sim.config(latency_ms=600)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: images(stub, (), HEALTHY_VM), range(6)))
    assert all(len(r) == 5 for r in results)
    assert sim.stats()["in_flight_peak"] == 6


# --- cancellation at any moment ------------------------------------------------------------------


QUEUE = 0.03


async def _cancellation_trials(url: str, sessions: list[str], trials: int, seed: int) -> dict[str, int]:
    """Calls of three identities to a hanging, a slow and a fast VM, each cancelled after a random
    pause (before it starts, while it waits for its share or for a global slot, while it holds
    both). One call of the first identity hangs upstream through every round, so that identity's
    share lives on. After each round only that share is left in the bookkeeping and the slots are
    exactly whole: of 17 more calls that hang upstream (8, 8 and 1 of the three identities), 15
    hold a slot, one fails on its identity's share and one on the global cap, once the queue
    timeout is over. A slot lost or given back twice changes those counts. At the end, with the
    long call cancelled, the bookkeeping is empty."""
    rng = random.Random(seed)
    client = ZStackClient(
        url, PassThrough(), max_body_bytes=1 << 20, max_concurrent=16, max_per_identity=8, queue_timeout=QUEUE
    )
    await client.start(False)
    callers = [PassThrough().authenticate_caller(auth(s)) for s in sessions]
    seen = {"cancelled": 0, "ok": 0, "identity_limit": 0, "concurrency_limit": 0}

    async def call(caller: CallerAuth, vm: str, budget: float = 5.0) -> Any:
        return await client.get_iso_candidates(
            CandidateIsoQuery(vm, (), ()), caller, Deadline.start(None, budget)
        )

    anchor = asyncio.ensure_future(call(callers[0], HANGING_VM, budget=300.0))
    try:
        for _ in range(trials):
            tasks = [
                asyncio.ensure_future(
                    call(rng.choice(callers), rng.choice((HANGING_VM, HANGING_VM, SLOW_VM, HEALTHY_VM)))
                )
                for _ in range(40)
            ]
            cancel_at = sorted((rng.uniform(0.0, 0.08), i) for i in range(len(tasks)))
            started = time.monotonic()
            for moment, i in cancel_at:
                await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
                tasks[i].cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, asyncio.CancelledError):
                    seen["cancelled"] += 1
                elif isinstance(outcome, errors.GatewayError) and outcome.reason == "UPSTREAM_IDENTITY_LIMIT":
                    seen["identity_limit"] += 1
                elif (
                    isinstance(outcome, errors.GatewayError)
                    and outcome.reason == "UPSTREAM_CONCURRENCY_LIMIT"
                ):
                    seen["concurrency_limit"] += 1
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    seen["ok"] += 1
            assert not anchor.done()
            assert client.identities_queued_or_in_flight == 1
            owners = [0] * 8 + [1] * 8 + [2]
            full = [asyncio.ensure_future(call(callers[i], HANGING_VM)) for i in owners]
            # The two refusals come once the queue timeout is over; a third (a slot lost) would come
            # at about the same moment, so a further pause shows it.
            for _ in range(100):
                await asyncio.sleep(0.01)
                if sum(t.done() for t in full) >= 2:
                    break
            await asyncio.sleep(2 * QUEUE)
            refused = sorted(t.exception().reason for t in full if t.done())  # type: ignore[union-attr]
            assert refused == ["UPSTREAM_CONCURRENCY_LIMIT", "UPSTREAM_IDENTITY_LIMIT"]
            assert sum(not t.done() for t in full) == 15
            for task in full:
                task.cancel()
            await asyncio.gather(*full, return_exceptions=True)
            assert client.identities_queued_or_in_flight == 1
        anchor.cancel()
        await asyncio.gather(anchor, return_exceptions=True)
        assert client.identities_queued_or_in_flight == 0
    finally:
        anchor.cancel()
        await client.close()
    return seen


def test_cancellation_at_any_moment_gives_back_exactly_what_was_taken(simulator, sim: SimControl):
    sessions = [zstack_sim.DEMO_SESSION_UUID, login(simulator), login(simulator)]
    sim.fault(action="hang", path=iso_path(HANGING_VM))
    sim.fault(action="delay_only", delay=0.05, path=iso_path(SLOW_VM))
    seen = asyncio.run(_cancellation_trials(simulator.url, sessions, trials=50, seed=20240501))
    print(seen)
    # Every way out happened many times over the trials.
    assert seen["cancelled"] > 500
    assert seen["ok"] > 50
    assert seen["identity_limit"] > 10
    assert seen["concurrency_limit"] > 10
    assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=10)


def test_grpc_callers_that_cancel_at_random_leave_the_gateway_whole(make_gateway, simulator, sim: SimControl):
    """The same through the gateway: callers of three sessions cancel their calls at random moments;
    afterwards the bookkeeping is empty and 16 calls of two sessions run at once."""
    gw = make_gateway(upstream_queue_timeout=0.2)
    stub = gw.stub
    sessions = [zstack_sim.DEMO_SESSION_UUID, login(simulator), login(simulator)]
    sim.fault(action="hang", path=iso_path(HANGING_VM))
    sim.fault(action="delay_only", delay=0.3, path=iso_path(SLOW_VM))
    rng = random.Random(7)
    for _ in range(5):
        calls = []
        for i in range(30):
            vm = rng.choice((HANGING_VM, SLOW_VM, HEALTHY_VM))
            # Distinct tags: no two calls share an upstream request, so each needs its own slot.
            request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm, system_tags=[f"trial-call-{i}"])
            calls.append(
                (
                    rng.uniform(0.0, 0.2),
                    stub.GetCandidateIso(request, metadata=auth(rng.choice(sessions)), timeout=10),
                )
            )
        started = time.monotonic()
        for moment, call in sorted(calls, key=lambda c: c[0]):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            call.cancel()
        assert wait_until(lambda: shares_in_use(gw) == 0, timeout=10)
        assert wait_until(lambda: sim.stats()["in_flight"] == 0, timeout=10)
        sim.clear_stats()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: tagged_images(stub, sessions[i % 2], SLOW_VM, i), range(16)))
        assert results == [[]] * 16
        assert sim.stats()["in_flight_peak"] == 16


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "share", "effective"), [(16, 0, 8), (15, 0, 8), (1, 0, 1), (16, 4, 4), (16, 16, 16)]
)
def test_the_share_defaults_to_half_the_total(total: int, share: int, effective: int):
    config = Config(
        zstack_url="http://127.0.0.1:1", max_upstream_calls=total, max_upstream_calls_per_identity=share
    )
    assert config.check().upstream_calls_per_identity == effective


@pytest.mark.parametrize("share", ["-1", "17"])
def test_a_share_outside_the_total_is_refused(share: str):
    with pytest.raises(ConfigError, match="--max-upstream-calls-per-identity"):
        cli.config_from(
            ["--zstack-url", "http://127.0.0.1:1", "--max-upstream-calls-per-identity", share], {}
        )


def test_the_share_comes_from_its_flag_or_environment_variable():
    env = {"ZSTACK_URL": "http://127.0.0.1:1", "GATEWAY_MAX_UPSTREAM_CALLS_PER_IDENTITY": "3"}
    assert cli.config_from([], env).max_upstream_calls_per_identity == 3
    assert (
        cli.config_from(["--max-upstream-calls-per-identity", "5"], env).max_upstream_calls_per_identity == 5
    )
