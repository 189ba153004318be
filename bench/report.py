"""The one table: a row per measured quantity of P1..P5, with its target and whether it was met."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    what: str
    direct: str
    gateway: str
    ratio: str
    target: str
    met: bool | None

    @property
    def met_text(self) -> str:
        return "-" if self.met is None else ("yes" if self.met else "NO")


def _n(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def _ratio_row(what: str, d: float, g: float, ratio: float, limit: float | None, digits: int = 2) -> Row:
    target = "-" if limit is None else f"<= {limit:g}"
    met = None if limit is None else ratio <= limit
    return Row(what, _n(d, digits), _n(g, digits), f"{ratio:.2f}", target, met)


def _p1(r: dict[str, Any]) -> list[Row]:
    d, g = r["direct"], r["gateway"]
    return [
        _ratio_row("P1 1 image: p50 ms", d["p50_ms"], g["p50_ms"], r["ratio_p50"], 1.1, 3),
        _ratio_row("P1 1 image: p99 ms", d["p99_ms"], g["p99_ms"], r["ratio_p99"], None, 3),
    ]


def _whole(tag: str, r: dict[str, Any]) -> list[Row]:
    label = f"{tag} {r['images']:,} images ({r['body_bytes'] / 1e6:.1f} MB)"
    d, g = r["direct"]["total_ms"], r["gateway"]["total_ms"]
    first = r["gateway"]["first_image_ms"]
    total_limit, first_limit = (0.8, 0.3) if tag == "P2" else (0.5, 0.15)
    return [
        _ratio_row(f"{label}: total ms", d, g, r["ratio_total"], total_limit),
        _ratio_row(f"{tag} first image ms (direct: total)", d, first, r["ratio_first_image"], first_limit),
    ]


def _p3_rss(r: dict[str, Any]) -> Row:
    rss = r["rss"]
    body_mb, growth_mb = r["body_bytes"] / 1e6, rss["growth_max_bytes"] / 1e6
    return Row(
        "P3 gateway RSS growth MB (direct: body)",
        _n(body_mb, 1),
        _n(growth_mb, 1),
        f"{rss['ratio_to_body']:.2f}",
        "<= 2",
        rss["ratio_to_body"] <= 2,
    )


def _p4(r: dict[str, Any]) -> list[Row]:
    d, g = r["direct"], r["gateway"]
    n, latency = r["callers"], r["latency_ms"]
    upstream_ratio = g["upstream_calls"] / d["upstream_calls"] if d["upstream_calls"] else float("inf")
    return [
        Row(
            f"P4 {n} callers: upstream calls",
            f"{d['upstream_calls']:g}",
            f"{g['upstream_calls']:g}",
            f"{upstream_ratio:.3f}",
            "<= 5 calls",
            g["upstream_calls_max"] <= 5,
        ),
        _ratio_row(
            f"P4 p50 ms (simulator latency {latency:g} ms)", d["p50_ms"], g["p50_ms"], r["ratio_p50"], 1.0
        ),
        _ratio_row("P4 p99 ms", d["p99_ms"], g["p99_ms"], r["ratio_p99"], None),
    ]


def _p5(r: dict[str, Any]) -> list[Row]:
    ratio = r["ratio"]
    rows = [
        Row(
            f"P5 c={r['concurrency']}: calls/s (direct: bare)",
            _n(r["bare"]["calls_per_s"], 0),
            _n(r["gateway"]["calls_per_s"], 0),
            f"{ratio:.2f}",
            ">= 0.8",
            ratio >= 0.8,
        )
    ]
    if "relay" in r:  # results of harnesses before the floor have none
        rows.append(
            Row(
                "P5 floor: bare + 1 GET per call (gateway: floor)",
                _n(r["bare"]["calls_per_s"], 0),
                _n(r["relay"]["calls_per_s"], 0),
                f"{r['ratio_relay']:.2f}",
                "-",
                None,
            )
        )
    return rows


def rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    if "P1" in results:
        out += _p1(results["P1"])
    if "P2" in results:
        out += _whole("P2", results["P2"])
    if "P3" in results:
        out += _whole("P3", results["P3"])
        out.append(_p3_rss(results["P3"]))
    if "P4" in results:
        out += _p4(results["P4"])
    if "P5" in results:
        out += _p5(results["P5"])
    return out


HEADER = ("what", "direct", "gateway", "ratio", "target", "met?")


def table(table_rows: list[Row]) -> str:
    """A Markdown table (it reads as plain text too)."""
    cells = [HEADER] + [(r.what, r.direct, r.gateway, r.ratio, r.target, r.met_text) for r in table_rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    right = (False, True, True, True, False, False)

    def line(row: tuple[str, ...]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        return "| " + " | ".join(parts) + " |"

    dashes = [("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True)]
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def header(meta: dict[str, Any]) -> str:
    return (
        f"zstack-gateway benchmark ({meta['mode']}) {meta['date']}, commit {meta['commit'] or '?'}"
        f"{' + uncommitted changes' if meta['dirty'] else ''}: {meta['cores']} cores, "
        f"Python {meta['python']}, grpcio {meta['grpcio']}, protobuf {meta['protobuf']}, "
        f"requests {meta['requests']}, aiohttp {meta['aiohttp']}; load average before "
        f"{' '.join(map(str, meta['loadavg_before']))}, after {' '.join(map(str, meta['loadavg_after']))}"
    )


def _cpu_text(cpu: dict[str, float], digits: int = 0) -> str:
    return ", ".join(f"{name} {value:,.{digits}f}" for name, value in cpu.items())


def footer(results: dict[str, dict[str, Any]]) -> str:
    """The simulator's own cost per request, and CPU per call of every process, per workload."""
    lines = ["simulator's own handling cost per request (mean, measured calls only):"]
    costs = []
    for tag in ("P1", "P2", "P3"):
        if tag in results:
            costs.append(f"{tag} {results[tag]['sim']['handling_cost_mean_us']:,.0f} us")
    if "P5" in results:
        costs.append(f"P5 {results['P5']['sim_last_gateway_round']['handling_cost_mean_us']:,.0f} us")
    lines.append("  " + "; ".join(costs))
    lines.append("CPU per call, us (process: sim, gateway, bare server; harness = the callers):")
    for tag in ("P1", "P2", "P3", "P4", "P5"):
        if tag in results:
            for path, cpu in results[tag]["cpu_us_per_call"].items():
                lines.append(f"  {tag} {path:<7}: {_cpu_text(cpu)}")
    if "P5" in results:
        busy = results["P5"]["cpu_busy"]
        lines.append(
            "P5 cores kept busy (1.0 = one core): "
            + "; ".join(f"{path}: {_cpu_text(b, 2)}" for path, b in busy.items())
        )
    return "\n".join(lines)


def as_json(table_rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in table_rows]
