"""Benchmark: the gateway against calling ZStack's REST API directly with requests.

    .venv/bin/python bench/run.py            # full run (make bench), a few minutes
    .venv/bin/python bench/run.py --quick    # the same code paths, tiny sizes (make bench-quick, CI)

Starts a simulator and a gateway per data set as separate processes on loopback, measures P1..P5
(see bench/README.md), prints one table and writes the results as JSON to bench/results/
(<UTC time>.json and latest.json; a quick run writes quick-latest.json only). It exits non-zero
only when the harness itself broke, never on a missed target.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import report
from procs import BENCH, HARNESS_ERRORS, ROOT
from workloads import (
    FULL,
    QUICK,
    Servers,
    Settings,
    p1_small_page,
    p2_thousand,
    p3_ten_thousand,
    p4_fan_in,
    p5_throughput,
    servers,
    timed,
)

WORKLOADS = ("P1", "P2", "P3", "P4", "P5")
Work = Callable[[Servers, Settings], dict[str, Any]]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def meta(settings: Settings) -> dict[str, Any]:
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        # Uncommitted changes to what is measured: the numbers are then not those of the commit.
        "dirty": bool(_git("status", "--porcelain", "--", "server", "client")),
        "mode": settings.mode,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": metadata.version("protobuf"),
        "requests": metadata.version("requests"),
        "aiohttp": metadata.version("aiohttp"),
        "machine": f"{platform.system()} {platform.machine()}",
        # Other work on the machine skews every number: the load before the run says how quiet it was.
        "loadavg_before": _loadavg(),
        "settings": settings.__dict__,
    }


def run_all(settings: Settings, only: set[str], log_dir: Path) -> dict[str, dict[str, Any]]:
    """One simulator + gateway per data set, stopped before the next set starts."""
    plan: list[tuple[int | None, list[tuple[str, Work]]]] = [
        (None, [("P1", p1_small_page), ("P4", p4_fan_in), ("P5", p5_throughput)]),
        (settings.p2_images, [("P2", p2_thousand)]),
        (settings.p3_images, [("P3", p3_ten_thousand)]),
    ]
    results: dict[str, dict[str, Any]] = {}
    for images, works in plan:
        chosen = [(tag, work) for tag, work in works if tag in only]
        if not chosen:
            continue
        with servers(log_dir, images) as stack:
            for tag, work in chosen:
                results[tag] = timed(tag, functools.partial(work, stack, settings))
    return results


def write_results(out_dir: Path, document: dict[str, Any], quick: bool) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    if quick:
        names = ["quick-latest.json"]
    else:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        names = [f"{stamp}.json", "latest.json"]
    written = []
    for name in names:
        path = out_dir / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so every started process is stopped on the way out.
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds (CI)")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help="comma-separated workloads to run (default: all)"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where the JSON goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    if not only <= set(WORKLOADS):
        print(f"unknown workloads: {', '.join(sorted(only - set(WORKLOADS)))}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    document: dict[str, Any] = {"meta": meta(settings)}
    try:
        with tempfile.TemporaryDirectory(prefix="zstack-bench-") as logs:
            results = run_all(settings, only, Path(logs))
    except HARNESS_ERRORS as exc:
        print(f"bench: the harness broke: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    rows = report.rows(results)
    document["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    document["meta"]["loadavg_after"] = _loadavg()
    document["table"] = report.as_json(rows)
    document["workloads"] = results
    print()
    print(report.header(document["meta"]))
    print()
    print(report.table(rows))
    print()
    print(report.footer(results))
    if args.quick:
        print("quick mode: sizes and rounds are tiny; the targets are for the full run (make bench)")
    for path in write_results(args.out, document, args.quick):
        print(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
