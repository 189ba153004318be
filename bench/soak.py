"""Soak test: many calls through a real gateway, then a check that nothing leaked.

Starts ``zstack-sim`` and ``zstack-gateway`` as subprocesses on loopback ports, then runs N calls
(default 20,000; ``--quick``: 1,000) at a fixed concurrency (default 64) from one grpc.aio client.
The calls mix successes, business errors (a missing VM -> NOT_FOUND, an unknown session ->
UNAUTHENTICATED, refused requests) and injected faults: fake VM paths with a fault rule of their own
(always failing the same way) and ``times``-limited rules on real VMs (some calls fail, the rest
succeed). Every call kind has the set of statuses it may end with. Callers also misbehave as they do
in a mesh: 10% of the calls read one message of a long list and cancel; 5% are pairs of identical
calls that share one (slow) upstream request, one of which cancels at a random moment while the
other must still get the whole list; a few read a long list slowly through a small receive window.

It fails (exit 1) on any unexpected status, gateway RSS growth over 30 MB (after warm-up vs the
end), open file descriptors, threads or asyncio tasks not back to their level after warm-up, the
gateway's in-flight gauge (``zstack_gateway_rpcs_in_flight``) not back to 0, an upstream request
left open in the simulator, a traceback in the gateway's log, or a run that did not finish in
``--max-seconds``. Exit 2: the harness itself broke (a server did not start).

asyncio tasks cannot be seen from outside the process: the gateway has no endpoint for them. The
soak starts the gateway through a small bootstrap (``python -c``) that runs the same ``cli.main``
with a SIGUSR1 handler added on its event loop, which writes ``soak-tasks N`` to the log;
``--no-task-probe`` runs the plain ``zstack-gateway`` entry point instead (tasks then unobserved).

    python bench/soak.py            # 20,000 calls
    python bench/soak.py --quick    # 1,000 calls, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import zstack_sim
from meters import percentile
from procs import HARNESS_ERRORS
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.data import Vm
from zstack_sim.generate import generate
from zstack_sim.processes import Proc, free_port, scrape, start_gateway, start_simulator, wait_until

C = grpc.StatusCode
SESSION = zstack_sim.DEMO_SESSION_UUID
MIB = 1024 * 1024
RSS_GROWTH_LIMIT_MB = 30.0
FD_TOLERANCE = 4
THREAD_TOLERANCE = 2
TASK_TOLERANCE = 2
SETTLE_S = 1.5
START_TIMEOUT_S = 30.0

TASKS_LINE = re.compile(r"soak-tasks (\d+)")

# Runs the gateway's own CLI, with one addition: SIGUSR1 writes the number of asyncio tasks of the
# gateway's event loop to stderr. Falls back to the plain CLI if the hook point is gone.
TASK_PROBE_BOOTSTRAP = """
import asyncio, signal, sys
from zstack_gateway import app, cli

_serve = getattr(app, "serve_until_signal", None)
if _serve is not None:
    async def _observed(gateway, *args):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(
            signal.SIGUSR1,
            lambda: print(f"soak-tasks {len(asyncio.all_tasks(loop))}", file=sys.stderr, flush=True),
        )
        await _serve(gateway, *args)

    app.serve_until_signal = _observed
sys.exit(cli.main(sys.argv[1:]))
"""


# ---------------------------------------------------------------------------------------------
# The call mix


def _fake_vm(n: int) -> str:
    return f"fa17{n:028x}"


#: A VM with LONG_LIST candidates (several stream messages), and one whose answer comes slowly
#: (SLOW_DELAY s) so that identical calls overlap and share it.
LONG_VM = "50a4000000000000000000000000b16a"
LONG_LIST = 2000
SLOW_VM = "50a4000000000000000000000000510e"
SLOW_DELAY = 0.2


@dataclass(frozen=True)
class Kind:
    """One kind of call: what it asks, and every status it may end with."""

    name: str
    weight: int
    vm: str
    expected: frozenset[grpc.StatusCode]
    timeout: float = 10.0
    session: str | None = SESSION  # None: no authorization metadata; "random": an unknown session
    fault: dict | None = None  # a rule scoped to this kind's VM path
    # How the caller behaves: "read" (reads it all), "cancel_mid" (reads one message, cancels),
    # "pair_cancel" (two identical calls share one upstream request; one cancels at a random
    # moment, the other must read it all), "slow_read" (reads slowly through a small window).
    behaviour: str = "read"


def _html(status: int, title: str) -> str:
    return f"<html><head><title>{status} {title}</title></head><body>nginx</body></html>"


KINDS = [
    Kind("ok", 36, zstack_sim.DEMO_VM_UUID, frozenset({C.OK, C.UNAVAILABLE})),  # times-limited reset_mid_body
    Kind(
        "ok_stopped", 10, zstack_sim.DEMO_STOPPED_VM_UUID, frozenset({C.OK, C.INTERNAL})
    ),  # times-limited truncate
    Kind("ok_empty", 5, zstack_sim.DEMO_EMPTY_VM_UUID, frozenset({C.OK})),
    Kind("missing_vm", 10, zstack_sim.DEMO_MISSING_VM_UUID, frozenset({C.NOT_FOUND})),
    Kind(
        "bad_session", 8, zstack_sim.DEMO_STARTING_VM_UUID, frozenset({C.UNAUTHENTICATED}), session="random"
    ),
    Kind("no_credentials", 3, zstack_sim.DEMO_VM_UUID, frozenset({C.UNAUTHENTICATED}), session=None),
    Kind("invalid_uuid", 3, "not-a-uuid", frozenset({C.INVALID_ARGUMENT})),
    Kind("f_reset", 3, _fake_vm(1), frozenset({C.UNAVAILABLE}), fault={"action": "reset"}),
    Kind(
        "f_proxy_502",
        3,
        _fake_vm(2),
        frozenset({C.UNAVAILABLE}),
        fault={"action": "respond", "status": 502, "body": _html(502, "Bad Gateway")},
    ),
    Kind(
        "f_bad_json",
        3,
        _fake_vm(3),
        frozenset({C.INTERNAL}),
        fault={"action": "respond", "status": 200, "body": '{"inventories": [{"uuid": '},
    ),
    Kind(
        "f_wrong_shape",
        2,
        _fake_vm(4),
        frozenset({C.INTERNAL}),
        fault={"action": "respond", "status": 200, "body": '{"inventories": {"uuid": "x"}}'},
    ),
    Kind(
        "f_not_ready",
        2,
        _fake_vm(5),
        frozenset({C.UNAVAILABLE}),
        fault={"action": "zstack_error", "code": "SYS.1010", "details": "management node is not ready"},
    ),
    Kind(
        "f_zstack_timeout",
        2,
        _fake_vm(6),
        frozenset({C.DEADLINE_EXCEEDED}),
        timeout=5.0,
        fault={"action": "zstack_error", "code": "SYS.1001", "details": "timeout"},
    ),
    Kind("long_list", 3, LONG_VM, frozenset({C.OK})),
    Kind("cancel_mid", 11, LONG_VM, frozenset({C.CANCELLED}), behaviour="cancel_mid"),
    Kind("pair_cancel", 5, SLOW_VM, frozenset({C.OK}), behaviour="pair_cancel"),  # two calls each
    Kind("slow_read", 1, LONG_VM, frozenset({C.OK}), timeout=30.0, behaviour="slow_read"),
    Kind("f_hang", 1, _fake_vm(7), frozenset({C.DEADLINE_EXCEEDED}), timeout=0.3, fault={"action": "hang"}),
    Kind(
        "f_drip",
        1,
        _fake_vm(8),
        frozenset({C.DEADLINE_EXCEEDED}),
        timeout=0.3,
        fault={"action": "drip", "interval": 0.05},
    ),
]

# Rules limited by ``times`` on real VMs' paths, (action, VM): some of those calls fail, the rest succeed.
# Each is used max(5, calls / 200) times.
TIMED_RULES = [("reset_mid_body", zstack_sim.DEMO_VM_UUID), ("truncate", zstack_sim.DEMO_STOPPED_VM_UUID)]


def write_sim_data(path: Path) -> None:
    """The demo data, plus LONG_VM with LONG_LIST generated candidates and SLOW_VM with the demo
    VM's candidates, as a data file for ``zstack-sim --data``."""
    data = zstack_sim.demo_data()
    generated = generate(LONG_LIST)
    data.images.update(generated.images)
    long_order = list(generated.vms[zstack_sim.DEMO_VM_UUID].candidates)
    demo_order = list(data.vms[zstack_sim.DEMO_VM_UUID].candidates)
    data.vms[LONG_VM] = Vm(LONG_VM, "soak-long-list", "Running", long_order)
    data.vms[SLOW_VM] = Vm(SLOW_VM, "soak-slow-answer", "Running", demo_order)
    path.write_text(json.dumps(data.to_json(ZoneInfo("Asia/Shanghai"))))


def iso_path_regex(vm: str) -> str:
    return f"^/zstack/v1/vm-instances/{vm}/iso-candidates$"


def plan(calls: int, seed: int) -> list[Kind]:
    rng = random.Random(seed)
    return rng.choices(KINDS, weights=[k.weight for k in KINDS], k=calls)


# ---------------------------------------------------------------------------------------------
# Measurements of the gateway process


@dataclass
class Sample:
    rss_mb: float
    fds: int
    threads: int
    tasks: int | None


def task_count(gateway: Proc, timeout: float = 2.0) -> int | None:
    """Ask the bootstrap for its task count (SIGUSR1) and read the answer from the log."""
    before = len(TASKS_LINE.findall(gateway.log()))
    gateway.signal(signal.SIGUSR1)
    if wait_until(lambda: len(TASKS_LINE.findall(gateway.log())) > before, timeout):
        return int(TASKS_LINE.findall(gateway.log())[-1])
    return None


def sample(gateway: Proc, probe_tasks: bool) -> Sample:
    return Sample(
        rss_mb=gateway.memory() / MIB,
        fds=len(os.listdir(f"/proc/{gateway.pid}/fd")),
        threads=len(os.listdir(f"/proc/{gateway.pid}/task")),
        tasks=task_count(gateway) if probe_tasks else None,
    )


# ---------------------------------------------------------------------------------------------
# The client


@dataclass
class Results:
    by_kind: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[tuple[str, str, str]] = field(default_factory=list)
    done: int = 0


async def one_call(stubs: Stubs, kind: Kind, rng: random.Random, results: Results) -> None:
    if kind.session is None:
        metadata: tuple[tuple[str, str], ...] = ()
    elif kind.session == "random":
        metadata = (("authorization", f"OAuth {rng.getrandbits(128):032x}"),)
    else:
        metadata = (("authorization", f"OAuth {kind.session}"),)
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=kind.vm)
    started = time.monotonic()
    code, detail = C.OK, ""
    try:
        if kind.behaviour == "cancel_mid":
            call = stubs.normal.GetCandidateIso(request, metadata=metadata, timeout=kind.timeout)
            await call.read()
            call.cancel()
            code = C.CANCELLED
        elif kind.behaviour == "pair_cancel":
            code, detail = await _pair(stubs.normal, request, metadata, kind.timeout, rng)
        elif kind.behaviour == "slow_read":
            async for _ in stubs.small_window.GetCandidateIso(
                request, metadata=metadata, timeout=kind.timeout
            ):
                await asyncio.sleep(0.1)
        else:
            async for _ in stubs.normal.GetCandidateIso(request, metadata=metadata, timeout=kind.timeout):
                pass
    except grpc.aio.AioRpcError as err:
        code, detail = err.code(), err.details() or ""
    results.latencies[kind.name].append(time.monotonic() - started)
    results.by_kind[kind.name][code.name] += 1
    results.done += 1
    if code not in kind.expected:
        results.unexpected.append((kind.name, code.name, detail[:200]))


async def _pair(
    stub: svc_grpc.VmInstanceServiceStub,
    request: svc.GetCandidateIsoRequest,
    metadata: tuple[tuple[str, str], ...],
    call_timeout: float,
    rng: random.Random,
) -> tuple[grpc.StatusCode, str]:
    """Two identical calls that share one upstream request; one of them (the first or the joiner)
    cancels at a random moment. What the other one saw."""
    first = stub.GetCandidateIso(request, metadata=metadata, timeout=call_timeout)
    reading = asyncio.ensure_future(_read(first))
    await asyncio.sleep(rng.uniform(0.0, SLOW_DELAY / 2))
    joiner = stub.GetCandidateIso(request, metadata=metadata, timeout=call_timeout)
    joined = asyncio.ensure_future(_read(joiner))
    await asyncio.sleep(rng.uniform(0.0, SLOW_DELAY / 2))
    leaver, stayer = (first, joined) if rng.random() < 0.5 else (joiner, reading)
    leaver.cancel()
    outcomes = await asyncio.gather(reading, joined)
    return outcomes[1] if stayer is joined else outcomes[0]


async def _read(call: grpc.aio.UnaryStreamCall) -> tuple[grpc.StatusCode, str]:  # type: ignore[type-arg]
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    except asyncio.CancelledError:
        return C.CANCELLED, "cancelled by this caller"
    return C.OK, ""


@dataclass
class Stubs:
    normal: svc_grpc.VmInstanceServiceStub
    #: A channel with a small receive window and no window growth: a slow reader holds the stream.
    small_window: svc_grpc.VmInstanceServiceStub


async def run_calls(
    target: str, kinds: list[Kind], concurrency: int, seed: int, results: Results, until: float
) -> bool:
    """Run every call of ``kinds`` with ``concurrency`` workers; False when time ran out first."""
    queue: asyncio.Queue[Kind] = asyncio.Queue()
    for kind in kinds:
        queue.put_nowait(kind)
    rng = random.Random(seed)
    small = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    async with (
        grpc.aio.insecure_channel(target) as channel,
        grpc.aio.insecure_channel(target, options=small) as small_channel,
    ):
        stubs = Stubs(svc_grpc.VmInstanceServiceStub(channel), svc_grpc.VmInstanceServiceStub(small_channel))

        async def worker() -> None:
            while time.monotonic() < until:
                try:
                    kind = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one_call(stubs, kind, rng, results)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return queue.empty()


# ---------------------------------------------------------------------------------------------
# Report


def print_calls(results: Results, elapsed: float) -> None:
    codes = sorted({c for counts in results.by_kind.values() for c in counts})
    header = (
        f"{'kind':<18}{'calls':>7}" + "".join(f"{c[:16]:>18}" for c in codes) + f"{'p50 ms':>9}{'p99 ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        counts = results.by_kind.get(kind.name, Counter())
        lat = results.latencies.get(kind.name, [])
        row = f"{kind.name:<18}{sum(counts.values()):>7}" + "".join(f"{counts.get(c, 0):>18}" for c in codes)
        row += "".join(f"{percentile(lat, q) * 1000:>9.1f}" if lat else f"{'-':>9}" for q in (50, 99))
        print(row)
    rate = results.done / elapsed if elapsed else 0.0
    print(
        f"{results.done} calls in {elapsed:.1f} s ({rate:.0f} calls/s), {len(results.unexpected)} unexpected"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="1,000 calls (for CI)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=None, help="give up after this long")
    parser.add_argument(
        "--no-task-probe", action="store_true", help="run the plain zstack-gateway entry point"
    )
    parser.add_argument(
        "--allow-log-tracebacks",
        action="store_true",
        help="report tracebacks in the gateway's log, do not fail",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    args = parser.parse_args(argv)
    calls = 1_000 if args.quick else args.calls
    max_seconds = args.max_seconds or (120.0 if args.quick else 900.0)
    probe_tasks = not args.no_task_probe
    warmup = max(100, calls // 10)

    workdir = Path(tempfile.mkdtemp(prefix="zstack-soak-"))
    servers: list[Proc] = []
    failures: list[str] = []
    try:
        data_file = workdir / "sim-data.json"
        write_sim_data(data_file)
        sim = start_simulator(workdir, "--data", str(data_file), timeout=START_TIMEOUT_S)
        servers.append(sim)
        control = SimControl(sim.address)
        metrics_port = free_port()
        gateway = start_gateway(
            workdir,
            sim.address,
            "--log-level",
            "WARNING",
            "--shutdown-grace",
            "2",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            command=[sys.executable, "-c", TASK_PROBE_BOOTSTRAP] if probe_tasks else None,
            timeout=START_TIMEOUT_S,
        )
        servers.append(gateway)

        for kind in KINDS:
            if kind.fault is not None:
                control.fault(**kind.fault, path=iso_path_regex(kind.vm))
        control.fault(action="delay_only", delay=SLOW_DELAY, path=iso_path_regex(SLOW_VM))
        timed_uses = max(5, calls // 200)
        for action, vm in TIMED_RULES:
            control.fault(action=action, path=iso_path_regex(vm), times=timed_uses)

        kinds = plan(calls, args.seed)
        results = Results()
        started = time.monotonic()
        until = started + max_seconds
        finished = asyncio.run(
            run_calls(gateway.address, kinds[:warmup], args.concurrency, args.seed, results, until)
        )
        time.sleep(SETTLE_S)
        base = sample(gateway, probe_tasks)
        peak_rss = base.rss_mb
        if finished:
            finished = asyncio.run(
                run_calls(gateway.address, kinds[warmup:], args.concurrency, args.seed + 1, results, until)
            )
        elapsed = time.monotonic() - started
        time.sleep(SETTLE_S)
        end = sample(gateway, probe_tasks)
        peak_rss = max(peak_rss, end.rss_mb, gateway.memory("VmHWM") / MIB)
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        in_flight = metrics.get("zstack_gateway_rpcs_in_flight", -1.0)
        stats = control.stats()
        rules_left = control.faults()

        print_calls(results, elapsed)
        print()
        print(f"{'gateway process':<22}{'after warm-up':>15}{'end':>10}{'delta':>10}{'limit':>10}")
        rows = [
            ("RSS (MiB)", base.rss_mb, end.rss_mb, RSS_GROWTH_LIMIT_MB),
            ("open fds", base.fds, end.fds, FD_TOLERANCE),
            ("threads", base.threads, end.threads, THREAD_TOLERANCE),
        ]
        if base.tasks is not None and end.tasks is not None:
            rows.append(("asyncio tasks", base.tasks, end.tasks, TASK_TOLERANCE))
        for label, before, after, limit in rows:
            delta = after - before
            print(f"{label:<22}{before:>15.1f}{after:>10.1f}{delta:>+10.1f}{limit:>10}")
            if delta > limit:
                failures.append(
                    f"{label}: {before:.1f} after warm-up, {after:.1f} at the end (limit +{limit})"
                )
        print(f"{'peak RSS (MiB)':<22}{peak_rss:>15.1f}")
        if base.tasks is None or end.tasks is None:
            print("asyncio tasks: not observed (the gateway has no endpoint for them; drop --no-task-probe)")
        print(
            f"simulator: {stats.get('total_requests')} requests, "
            f"in flight at the end {stats.get('in_flight')}, faults used {stats.get('faults')}"
        )

        if not finished:
            failures.append(
                f"the run did not finish in {max_seconds:.0f} s ({results.done} of {calls} calls)"
            )
        if results.unexpected:
            failures.append(f"{len(results.unexpected)} unexpected statuses")
            for kind_name, code, detail in results.unexpected[:20]:
                print(f"  unexpected: {kind_name} -> {code}: {detail}")
        print(f"gateway: rpcs in flight at the end {in_flight:.0f}")
        if in_flight != 0:
            failures.append(f"the gateway's in-flight gauge is {in_flight:.0f} at the end, not 0")
        if stats.get("in_flight"):
            failures.append(f"{stats['in_flight']} upstream requests still open in the simulator")
        timed_left = [r for r in rules_left if r.get("times") is not None]
        faults_used = stats.get("faults", {})
        for action, _ in TIMED_RULES:
            if faults_used.get(action, 0) < timed_uses:
                failures.append(
                    f"times-limited rule {action} used {faults_used.get(action, 0)} of {timed_uses} times"
                )
        if timed_left:
            failures.append(f"times-limited rules not used up: {timed_left}")
        tracebacks = [
            line for line in gateway.log().splitlines() if "Traceback (most recent call last)" in line
        ]
        if tracebacks:
            problem = (
                f"{len(tracebacks)} log records with a traceback in the gateway's log ({gateway.log_path})"
            )
            for line in tracebacks[:5]:
                print(f"  traceback: {line[:300]}")
            if args.allow_log_tracebacks:
                print(f"warning: {problem}")
            else:
                failures.append(problem)
        rc = gateway.stop()
        if rc != 0:
            failures.append(f"the gateway exited with {rc} on SIGTERM")
    except (*HARNESS_ERRORS, OSError) as exc:
        print(f"soak: harness error: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in servers:
            server.stop()
        if args.keep_logs or failures:
            print(f"logs: {workdir}")
        else:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()

    print()
    if failures:
        print("SOAK FAILED:")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
