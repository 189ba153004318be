"""The five workloads of the benchmark. Each returns a JSON-ready dict; times are in milliseconds.

Every workload warms both paths up first, then measures them in alternating rounds (the order swaps
every round: direct-gateway, gateway-direct, ...) so that noise on the shared machine hits both, and
reports medians over rounds. The simulator's counters are cleared after the warm-up, so its
handling cost and request counts cover the measured calls only.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import zstack_sim
from callers import Caller, DirectCaller, GatewayCaller, Timing, burst, throughput, timed_block
from meters import CpuMeter, RssSampler, median, percentile
from zstack_sim.control_client import SimControl
from zstack_sim.processes import Proc

MS = 1000.0


@dataclass(frozen=True)
class Settings:
    mode: str
    warmup_calls: int
    p1_rounds: int
    p1_calls: int
    p2_images: int
    p2_rounds: int
    p2_calls: int
    p3_images: int
    p3_rounds: int
    p3_calls: int
    p3_rss_calls: int
    p4_callers: int
    p4_rounds: int
    p4_latency_ms: float
    p5_concurrency: int
    p5_rounds: int
    p5_seconds: float


FULL = Settings(
    mode="full",
    warmup_calls=20,
    p1_rounds=10,
    p1_calls=200,
    p2_images=1_000,
    p2_rounds=10,
    p2_calls=10,
    p3_images=10_000,
    p3_rounds=7,
    p3_calls=3,
    p3_rss_calls=3,
    p4_callers=200,
    p4_rounds=3,
    p4_latency_ms=50.0,
    p5_concurrency=64,
    p5_rounds=5,
    p5_seconds=4.0,
)

QUICK = Settings(
    mode="quick",
    warmup_calls=5,
    p1_rounds=3,
    p1_calls=50,
    p2_images=100,
    p2_rounds=3,
    p2_calls=5,
    p3_images=1_000,
    p3_rounds=3,
    p3_calls=3,
    p3_rss_calls=2,
    p4_callers=50,
    p4_rounds=2,
    p4_latency_ms=50.0,
    p5_concurrency=64,
    p5_rounds=2,
    p5_seconds=1.5,
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the servers of a workload ----------------------------------------------------------------------


@dataclass
class Servers:
    """A simulator, a gateway in front of it, and the simulator's control plane."""

    sim: Proc
    gateway: Proc
    control: SimControl
    images: int
    log_dir: Path

    @property
    def sim_url(self) -> str:
        return self.sim.address

    def procs(self) -> dict[str, Proc]:
        return {"sim": self.sim, "gateway": self.gateway}


@contextlib.contextmanager
def servers(log_dir: Path, images: int | None) -> Iterator[Servers]:
    """``images`` generated ISOs, or ``None`` for the API page's example alone (1 image): the demo
    data with the demo VM's candidates cut to the seed page's image."""
    tag = "seed" if images is None else str(images)
    with contextlib.ExitStack() as stack:
        sim = procs.simulator(log_dir, tag, images)
        stack.callback(sim.stop)
        control = SimControl(sim.address)
        if images is None:
            control.set_vm(zstack_sim.DEMO_VM_UUID, candidates=[zstack_sim.DEMO_SEED_IMAGE_UUID])
        gateway = procs.gateway(log_dir, tag, sim.address)
        stack.callback(gateway.stop)
        yield Servers(sim, gateway, control, 1 if images is None else images, log_dir)


def sim_report(control: SimControl) -> dict[str, Any]:
    stats = control.stats()
    return {
        "iso_candidates_requests": stats["by_route"].get("iso_candidates", 0),
        "handling_cost_mean_us": stats["handling_cost_mean_us"],
        "in_flight_peak": stats["in_flight_peak"],
    }


# --- sequential calls, alternating paths --------------------------------------------------------------


@dataclass
class Rounds:
    """Per path, the calls of every round, and the CPU the processes spent on that path's blocks."""

    timings: dict[str, list[list[Timing]]]
    cpu: dict[str, CpuMeter]

    def per_round(self, path: str, stat: Callable[[list[Timing]], float]) -> list[float]:
        return [stat(block) for block in self.timings[path]]

    def calls(self, path: str) -> int:
        return sum(len(block) for block in self.timings[path])

    def cpu_per_call_us(self) -> dict[str, dict[str, float]]:
        return {path: meter.per_call_us(self.calls(path)) for path, meter in self.cpu.items()}


def alternate(
    callers: Mapping[str, Caller],
    meter_procs: Mapping[str, Mapping[str, Proc]],
    rounds: int,
    calls: int,
    expect_images: int,
) -> Rounds:
    names = list(callers)
    result = Rounds({n: [] for n in names}, {n: CpuMeter(meter_procs[n]) for n in names})
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            meter = result.cpu[name]
            meter.start()
            result.timings[name].append(timed_block(callers[name], calls, expect_images))
            meter.stop()
    return result


def interleave(
    callers: Mapping[str, Caller],
    meter_procs: Mapping[str, Mapping[str, Proc]],
    rounds: int,
    calls: int,
    expect_images: int,
) -> Rounds:
    """Like :func:`alternate`, but the paths take turns call by call (the order swaps every call), so
    that a slow or fast moment of the machine hits both alike; CPU is metered around each call."""
    names = list(callers)
    result = Rounds({n: [] for n in names}, {n: CpuMeter(meter_procs[n]) for n in names})
    for _ in range(rounds):
        blocks: dict[str, list[Timing]] = {n: [] for n in names}
        for index in range(calls):
            for name in names if index % 2 == 0 else reversed(names):
                meter = result.cpu[name]
                meter.start()
                blocks[name] += timed_block(callers[name], 1, expect_images)
                meter.stop()
        for name in names:
            result.timings[name].append(blocks[name])
    return result


def _total_ms(p: float) -> Callable[[list[Timing]], float]:
    return lambda block: percentile([t.total for t in block], p) * MS


def _first_ms(block: list[Timing]) -> float:
    return median(t.first_image for t in block if t.first_image is not None) * MS


def _both(servers: Servers) -> tuple[DirectCaller, GatewayCaller]:
    return DirectCaller(servers.sim_url), GatewayCaller(servers.gateway.address)


def _warm(callers: Sequence[Caller], calls: int, expect_images: int) -> None:
    for caller in callers:
        timed_block(caller, calls, expect_images)


def _meters(servers: Servers) -> dict[str, dict[str, Proc]]:
    return {"direct": {"sim": servers.sim}, "gateway": servers.procs()}


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("inf")


def p1_small_page(servers: Servers, s: Settings) -> dict[str, Any]:
    """P1: the seed page's example (1 image), sequential calls interleaved one by one (direct,
    gateway, gateway, direct, ...); p50 and p99 of each path per round."""
    direct, gateway = _both(servers)
    try:
        _warm([direct, gateway], s.warmup_calls * 5, servers.images)
        servers.control.clear_stats()
        rounds = interleave(
            {"direct": direct, "gateway": gateway}, _meters(servers), s.p1_rounds, s.p1_calls, servers.images
        )
    finally:
        direct.close()
        gateway.close()
    out: dict[str, Any] = {
        "images": servers.images,
        "rounds": s.p1_rounds,
        "calls_per_round": s.p1_calls,
        "order": "interleaved call by call",
    }
    for path in ("direct", "gateway"):
        p50s, p99s = rounds.per_round(path, _total_ms(50)), rounds.per_round(path, _total_ms(99))
        out[path] = {
            "p50_ms": round(median(p50s), 3),
            "p99_ms": round(median(p99s), 3),
            "rounds_p50_ms": [round(v, 3) for v in p50s],
            "rounds_p99_ms": [round(v, 3) for v in p99s],
        }
    out["ratio_p50"] = _ratio(out["gateway"]["p50_ms"], out["direct"]["p50_ms"])
    out["ratio_p99"] = _ratio(out["gateway"]["p99_ms"], out["direct"]["p99_ms"])
    out["cpu_us_per_call"] = rounds.cpu_per_call_us()
    out["sim"] = sim_report(servers.control)
    return out


def _whole_list(servers: Servers, s: Settings, rounds_n: int, calls: int) -> tuple[Rounds, int]:
    """P2/P3's timing: whole lists, alternating; also the body size of the simulator's JSON."""
    direct, gateway = _both(servers)
    try:
        _warm([direct, gateway], max(2, s.warmup_calls // 5), servers.images)
        body_bytes = direct.call().body_bytes
        servers.control.clear_stats()
        rounds = alternate(
            {"direct": direct, "gateway": gateway}, _meters(servers), rounds_n, calls, servers.images
        )
    finally:
        direct.close()
        gateway.close()
    return rounds, body_bytes


def _whole_list_report(rounds: Rounds, servers: Servers, body_bytes: int) -> dict[str, Any]:
    direct = rounds.per_round("direct", _total_ms(50))
    gateway = rounds.per_round("gateway", _total_ms(50))
    first = rounds.per_round("gateway", _first_ms)
    direct_ms, gateway_ms, first_ms = median(direct), median(gateway), median(first)
    return {
        "images": servers.images,
        "body_bytes": body_bytes,
        "rounds": len(rounds.timings["direct"]),
        "calls_per_round": len(rounds.timings["direct"][0]),
        "direct": {"total_ms": round(direct_ms, 2), "rounds_total_ms": [round(v, 2) for v in direct]},
        "gateway": {
            "total_ms": round(gateway_ms, 2),
            "first_image_ms": round(first_ms, 2),
            "rounds_total_ms": [round(v, 2) for v in gateway],
            "rounds_first_image_ms": [round(v, 2) for v in first],
        },
        "ratio_total": _ratio(gateway_ms, direct_ms),
        "ratio_first_image": _ratio(first_ms, direct_ms),
        "cpu_us_per_call": rounds.cpu_per_call_us(),
        "sim": sim_report(servers.control),
    }


def p2_thousand(servers: Servers, s: Settings) -> dict[str, Any]:
    """P2: a ~1 MB list; total time of each path, and the gateway's time to the first image."""
    rounds, body_bytes = _whole_list(servers, s, s.p2_rounds, s.p2_calls)
    return _whole_list_report(rounds, servers, body_bytes)


def _rss_growth(servers: Servers, calls: int) -> dict[str, Any]:
    """Gateway calls on a fresh gateway, each with the gateway's RSS sampled: the first call finds
    the process cold, so its growth is what one such call needs."""
    gateway = GatewayCaller(servers.gateway.address)
    growths: list[int] = []
    hwm: list[int] = []
    baselines: list[int] = []
    try:
        for _ in range(calls):
            with RssSampler(servers.gateway.pid) as sampler:
                timed_block(gateway, 1, servers.images)
            growths.append(sampler.growth)
            hwm.append(sampler.hwm_growth)
            baselines.append(sampler.baseline)
    finally:
        gateway.close()
    return {"growth_bytes": growths, "hwm_growth_bytes": hwm, "baseline_bytes": baselines}


def p3_ten_thousand(servers: Servers, s: Settings) -> dict[str, Any]:
    """P3: a ~10 MB list; as P2, plus the gateway's RSS growth against the body size."""
    rss = _rss_growth(servers, s.p3_rss_calls)
    rounds, body_bytes = _whole_list(servers, s, s.p3_rounds, s.p3_calls)
    out = _whole_list_report(rounds, servers, body_bytes)
    growth = max(rss["growth_bytes"])
    out["rss"] = {
        **rss,
        "growth_max_bytes": growth,
        "ratio_to_body": _ratio(growth, body_bytes),
    }
    return out


# --- P4: fan-in ------------------------------------------------------------------------------------


def _burst_round(callers: Sequence[Caller], control: SimControl, meter: CpuMeter) -> dict[str, Any]:
    meter.start()
    timings = burst(callers, control.clear_stats)
    meter.stop()
    totals = [t.total for t in timings]
    sim = sim_report(control)
    return {
        "p50_ms": round(percentile(totals, 50) * MS, 2),
        "p99_ms": round(percentile(totals, 99) * MS, 2),
        "upstream_calls": sim["iso_candidates_requests"],
        "sim_in_flight_peak": sim["in_flight_peak"],
    }


def p4_fan_in(servers: Servers, s: Settings) -> dict[str, Any]:
    """P4: ``p4_callers`` concurrent identical calls with the simulator answering after a latency.

    Callers are threads, each with its own requests session or its own gRPC channel and connection
    (independent callers, as separate services would be), warmed up one by one at no latency and
    released together by a barrier. Upstream calls are what the simulator counted for the burst.
    """
    control = servers.control
    paths: dict[str, list[Caller]] = {
        "direct": [DirectCaller(servers.sim_url) for _ in range(s.p4_callers)],
        "gateway": [GatewayCaller(servers.gateway.address, own_connection=True) for _ in range(s.p4_callers)],
    }
    rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    meters = {path: CpuMeter(watched) for path, watched in _meters(servers).items()}
    try:
        control.config(latency_ms=0)
        for callers in paths.values():
            _warm(callers, 1, servers.images)
        control.config(latency_ms=s.p4_latency_ms)
        for index in range(s.p4_rounds):
            for path in ("direct", "gateway") if index % 2 == 0 else ("gateway", "direct"):
                rounds[path].append(_burst_round(paths[path], control, meters[path]))
    finally:
        control.config(latency_ms=0)
        for callers in paths.values():
            for caller in callers:
                caller.close()
    out: dict[str, Any] = {
        "callers": s.p4_callers,
        "latency_ms": s.p4_latency_ms,
        "rounds": s.p4_rounds,
        "caller_model": "threads released by a barrier, one requests.Session / one grpc channel each",
    }
    for path, results in rounds.items():
        out[path] = {
            key: median(r[key] for r in results)
            for key in ("p50_ms", "p99_ms", "upstream_calls", "sim_in_flight_peak")
        }
        out[path]["upstream_calls_max"] = max(r["upstream_calls"] for r in results)
        out[path]["rounds"] = results
    out["cpu_us_per_call"] = {path: m.per_call_us(s.p4_callers * s.p4_rounds) for path, m in meters.items()}
    out["ratio_p50_to_latency"] = _ratio(out["gateway"]["p50_ms"], s.p4_latency_ms)
    out["ratio_p50"] = _ratio(out["gateway"]["p50_ms"], out["direct"]["p50_ms"])
    out["ratio_p99"] = _ratio(out["gateway"]["p99_ms"], out["direct"]["p99_ms"])
    return out


# --- P5: throughput against the framework's limit ---------------------------------------------------------


def p5_throughput(servers: Servers, s: Settings) -> dict[str, Any]:
    """P5: calls/s at a fixed concurrency with no simulator latency, gateway against a bare grpc.aio
    server streaming the same messages with no upstream call; one load generator drives both. The
    floor (``relay``): the bare server making one GET to the simulator per call, what any gateway
    built on grpc.aio and aiohttp pays before doing anything of its own."""
    with contextlib.ExitStack() as stack:
        bare = procs.bare_server(servers.log_dir, servers.sim_url)
        stack.callback(bare.stop)
        relay = procs.bare_server(servers.log_dir, servers.sim_url, relay=True)
        stack.callback(relay.stop)
        targets = {"bare": bare.address, "gateway": servers.gateway.address, "relay": relay.address}
        meters = {
            "bare": CpuMeter({"bare": bare}),
            "gateway": CpuMeter(servers.procs()),
            "relay": CpuMeter({"sim": servers.sim, "relay": relay}),
        }
        results: dict[str, list[float]] = {name: [] for name in targets}
        calls: dict[str, int] = dict.fromkeys(targets, 0)
        servers.control.config(latency_ms=0)
        orders = (("bare", "gateway", "relay"), ("gateway", "relay", "bare"), ("relay", "bare", "gateway"))
        for index in range(s.p5_rounds):
            for name in orders[index % len(orders)]:
                if name == "gateway":
                    servers.control.clear_stats()
                meters[name].start()
                measured = throughput(targets[name], s.p5_concurrency, s.p5_seconds)
                meters[name].stop()
                results[name].append(measured.per_second)
                calls[name] += measured.calls
                if name == "gateway":  # read now: the floor's rounds use the same simulator
                    sim = sim_report(servers.control)
    bare_rate, gateway_rate = median(results["bare"]), median(results["gateway"])
    relay_rate = median(results["relay"])
    return {
        "concurrency": s.p5_concurrency,
        "seconds_per_round": s.p5_seconds,
        "rounds": s.p5_rounds,
        "images": servers.images,
        "bare": {"calls_per_s": round(bare_rate, 1), "rounds": [round(r, 1) for r in results["bare"]]},
        "gateway": {
            "calls_per_s": round(gateway_rate, 1),
            "rounds": [round(r, 1) for r in results["gateway"]],
        },
        "relay": {"calls_per_s": round(relay_rate, 1), "rounds": [round(r, 1) for r in results["relay"]]},
        "ratio": _ratio(gateway_rate, bare_rate),
        "ratio_relay": _ratio(relay_rate, bare_rate),
        "cpu_us_per_call": {name: meters[name].per_call_us(calls[name]) for name in meters},
        "cpu_busy": {name: meters[name].busy() for name in meters},
        "sim_last_gateway_round": sim,
    }


def timed(name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    progress(f"{name} ...")
    started = time.perf_counter()
    result = work()
    result["seconds"] = round(time.perf_counter() - started, 1)
    progress(f"{name} done in {result['seconds']} s")
    return result
