"""``zstack-sim``: serve a simulated ZStack management node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from zstack_sim import table
from zstack_sim.data import DataError, SimData, load_data
from zstack_sim.demo import DEMO_MISSING_VM_UUID, demo_data
from zstack_sim.generate import generate
from zstack_sim.server import Simulator
from zstack_sim.zones import resolve_tz

__all__ = ["main", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zstack-sim",
        description="A simulated ZStack management node (GetCandidateIsoForAttachingVm, login, sessions), "
        "with a control plane under /_sim for tests and benchmarks. At start it prints, after its "
        "ready line, the table of its data: the account's name and password, the AccessKey id and "
        "secret, the sessions (valid or expired), and each VM uuid with what GetCandidateIso answers "
        "for it (images, an empty list, NOT_FOUND); --print-table prints it alone.",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8080; port 0 picks a free one)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="FILE", help="data file (JSON; see zstack_sim.data); default: demo data"
    )
    source.add_argument(
        "--generate-images",
        type=int,
        metavar="N",
        help="one Running VM (the demo VM uuid) with N generated ISO candidates",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="extra latency on iso-candidates calls")
    p.add_argument("--tz", default="Asia/Shanghai", help="the MN's time zone (default Asia/Shanghai)")
    p.add_argument(
        "--session-timeout",
        type=float,
        default=7200.0,
        metavar="S",
        help="session idle timeout in seconds (default 7200)",
    )
    p.add_argument("--max-sessions", type=int, default=500, help="max sessions per account (default 500)")
    p.add_argument(
        "--content-type",
        default=None,
        help="send this Content-Type on JSON bodies (default: none, like the real MN)",
    )
    p.add_argument(
        "--check-time-zone",
        action="store_true",
        help="compare AccessKey Date instants instead of wall clocks (rest.checkTimeZone=true)",
    )
    p.add_argument("--dump-data", action="store_true", help="print the data as a data file and exit")
    p.add_argument(
        "--print-table",
        action="store_true",
        help="print the table of the data (accounts, access keys, sessions, VMs and what each "
        "answers) and exit",
    )
    return p


def _load(args: argparse.Namespace) -> SimData:
    if args.data:
        return load_data(args.data, tz=args.tz)
    if args.generate_images is not None:
        return generate(args.generate_images)
    return demo_data()


async def _serve(sim: Simulator, data_table: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    host = f"[{sim.host}]" if ":" in sim.host else sim.host
    # One write: whoever waits for the ready line finds the table with it.
    print(f"zstack-sim listening on http://{host}:{sim.port}\n{table.TITLE}\n{data_table}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tz = resolve_tz(args.tz)
        data = _load(args)
    except (DataError, ValueError, OSError) as exc:
        print(f"zstack-sim: {exc}", file=sys.stderr)
        return 2
    if args.dump_data:
        print(json.dumps(data.to_json(tz), ensure_ascii=False, indent=2))
        return 0
    data_table = table.render(data, tz, missing_vm=DEMO_MISSING_VM_UUID, latency_ms=args.latency_ms)
    if args.print_table:
        print(data_table)
        return 0
    host, port = args.listen
    sim = Simulator(
        data,
        host,
        port,
        tz=tz,
        session_timeout=args.session_timeout,
        content_type=args.content_type,
        latency_ms=args.latency_ms,
        max_sessions=args.max_sessions,
        check_time_zone=args.check_time_zone,
    )
    try:
        asyncio.run(_serve(sim, data_table))
    except OSError as exc:
        print(f"zstack-sim: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
