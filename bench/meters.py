"""What the harness measures besides call times: processes' CPU time, the gateway's memory, and the
statistics the table reports."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from procs import HarnessError, cpu_seconds
from zstack_sim.processes import Proc, memory_bytes

# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``q`` from 0 to 100) of ``values``, interpolated linearly between
    the two closest ranks: with the values sorted as ``v[0] .. v[n-1]``, the value at position
    ``(n - 1) * q / 100`` (numpy's default "linear" method; ``statistics.quantiles`` with
    ``method="inclusive"``). ``percentile(v, 50)`` is the median, 0 the minimum, 100 the maximum,
    and a percentile never lies outside the values seen. Raises HarnessError for no values."""
    if not values:
        raise HarnessError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --- CPU time per process ---------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by named processes (and this harness) between ``start()`` and ``stop()``,
    added up over any number of such windows."""

    def __init__(self, procs: Mapping[str, Proc]) -> None:
        self._pids = {name: proc.pid for name, proc in procs.items()}
        self.used: dict[str, float] = dict.fromkeys([*self._pids, "harness"], 0.0)
        self.wall = 0.0
        self._at: dict[str, float] = {}
        self._wall_at = 0.0

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        now["harness"] = time.process_time()
        return now

    def start(self) -> None:
        self._at = self._now()
        self._wall_at = time.perf_counter()

    def stop(self) -> None:
        now = self._now()
        self.wall += time.perf_counter() - self._wall_at
        for name, value in now.items():
            self.used[name] += value - self._at[name]

    def per_call_us(self, calls: int) -> dict[str, float]:
        return {name: round(used / calls * 1e6, 1) for name, used in self.used.items()}

    def busy(self) -> dict[str, float]:
        """Share of one core each process kept busy over the measured windows (1.0 = a full core)."""
        return {name: round(used / self.wall, 2) for name, used in self.used.items()} if self.wall else {}


# --- the gateway's memory ----------------------------------------------------------------------------


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds on a thread while in the ``with`` block.

    ``growth`` is the highest sample minus the RSS read just before the block; ``hwm_growth`` is the
    kernel's high-water mark (VmHWM) after the block minus that same baseline, an upper bound that
    catches a peak between two samples (it only means something while the process's peak is new).
    """

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.hwm_growth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory_bytes(self.pid))
            self._stop.wait(self.interval)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)

    def __enter__(self) -> RssSampler:
        self.baseline = memory_bytes(self.pid)
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_bytes(self.pid))
        self.hwm_growth = max(0, memory_bytes(self.pid, "VmHWM") - self.baseline)
