"""The simulator's mutable state: data, sessions, configuration, fault rules, request log and stats."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from zstack_sim import gson
from zstack_sim.data import SimData, Vm, render_image
from zstack_sim.faults import FaultBook
from zstack_sim.jobs import JobStore
from zstack_sim.sessions import SessionStore
from zstack_sim.vms import ZONE_UUID, render_vm

__all__ = ["ConfigError", "RequestLog", "SimConfig", "SimState", "Stats"]


class ConfigError(ValueError):
    """A configuration update that cannot be applied."""


@dataclass
class SimConfig:
    """Runtime knobs (``GET/POST/PUT /_sim/config``)."""

    # Extra latency on iso-candidates calls, in milliseconds.
    latency_ms: float = 0.0
    # identity.session.timeout, seconds.
    session_timeout: float = 7200.0
    # session.maxConcurrent per account.
    max_sessions: int = 500
    # Content-Type for JSON bodies (200 and 503); None sends none, like the real MN [INF].
    content_type: str | None = None
    # rest.checkTimeZone for AccessKey Date checks (ZStack's default: false).
    check_time_zone: bool = False
    # What GET /v1/management-nodes/ready reports.
    ready: bool = True
    # How long an async job (attach, detach) runs before its outcome shows, seconds.
    job_seconds: float = 0.2
    # How long a finished job stays pollable (rest.completedApi.expiredPeriod), seconds.
    job_retention: float = 10800.0
    # host:port written in a 202's `location`: the MN's own address, which may be internal; never
    # the simulator's listening address, so that a client must poll its configured URL instead.
    job_host: str = "10.0.0.10:8080"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: Any) -> None:
        """Apply a partial update; unknown keys or wrong types raise ConfigError (nothing applied)."""
        if not isinstance(changes, dict):
            raise ConfigError("config must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(self)}
        staged: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(f"unknown config key {key!r}; known: {sorted(known)}")
            staged[key] = _coerce(key, value)
        for key, value in staged.items():
            setattr(self, key, value)


def _coerce(key: str, value: Any) -> Any:
    if key == "job_host":
        if not isinstance(value, str) or not value or any(c in value for c in " /\r\n\t"):
            raise ConfigError("job_host must be host:port")
        return value
    if key in ("latency_ms", "session_timeout", "job_seconds", "job_retention"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{key} must be a number >= 0")
        return float(value)
    if key == "max_sessions":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("max_sessions must be an integer >= 1")
        return value
    if key == "content_type":
        if value is not None and (not isinstance(value, str) or "\n" in value or "\r" in value):
            raise ConfigError("content_type must be a one-line string or null")
        return value
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be a boolean")
    return value


class RequestLog:
    """The received /zstack requests, newest last, bounded."""

    def __init__(self, limit: int = 10000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def append(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def to_json(self) -> list[dict[str, Any]]:
        return list(self._entries)


class Stats:
    """Request counters, in-flight peak and the simulator's own handling cost."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; requests still in flight stay counted as in flight."""
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.in_flight_peak = self.in_flight
        self._cost_ns = 0
        self._cost_count = 0

    def begin(self, route: str) -> None:
        self.total += 1
        self.by_route[route] += 1
        self.in_flight += 1
        self.in_flight_peak = max(self.in_flight_peak, self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1

    def add_cost(self, nanoseconds: int) -> None:
        self._cost_ns += nanoseconds
        self._cost_count += 1

    def to_json(self) -> dict[str, Any]:
        mean = self._cost_ns / self._cost_count / 1000 if self._cost_count else 0.0
        return {
            "total_requests": self.total,
            "by_route": dict(self.by_route),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "in_flight_peak": self.in_flight_peak,
            "handling_cost_mean_us": round(mean, 2),
            "handling_cost_samples": self._cost_count,
        }


class SimState:
    """Everything a request can see or change. Single-threaded: used from the server's event loop."""

    def __init__(self, data: SimData, config: SimConfig, tz: tzinfo, *, log_limit: int = 10000) -> None:
        self.tz = tz
        self._initial_data = data.copy()
        self._initial_config = dataclasses.replace(config)
        self.config = config
        self.faults = FaultBook()
        self.log = RequestLog(log_limit)
        self.stats = Stats()
        self.clock_offset = 0.0
        self.data = data
        self._image_cache: dict[str, bytes] = {}
        self._body_cache: dict[tuple[str, ...], bytes] = {}
        self.sessions = self._session_store()
        self.jobs = self._job_store()
        self.zone_uuid = ZONE_UUID

    def _job_store(self) -> JobStore:
        return JobStore(self.now, lambda: self.config.job_retention)

    def vm_json(self, vm: Vm) -> dict[str, Any]:
        """``VmInstanceInventory`` of ``vm`` as ZStack writes it (dates as Gson strings)."""
        return render_vm(vm, self.gson_date)

    def job_timing(self, raw_path: str) -> float | None:
        """How long a job submitted on ``raw_path`` runs: a ``job`` fault rule's, else the
        configured time; None: it never finishes."""
        rule = self.faults.take_job(raw_path)
        if rule is None:
            return self.config.job_seconds
        if rule.params.get("never") is True:
            return None
        seconds = rule.params.get("seconds", self.config.job_seconds)
        return float(seconds)

    def _session_store(self) -> SessionStore:
        return SessionStore(
            self.data.sessions,
            self.now,
            lambda: self.config.session_timeout,
            lambda: self.config.max_sessions,
        )

    def now(self) -> float:
        """The MN's clock, epoch seconds (real time plus the control plane's offset)."""
        return time.time() + self.clock_offset

    def now_local(self) -> datetime:
        return datetime.fromtimestamp(self.now(), self.tz)

    def gson_date(self, epoch: float) -> str:
        return gson.format_date(datetime.fromtimestamp(epoch, self.tz), self.tz)

    def image_json(self, image_uuid: str) -> bytes:
        """One image's Gson encoding, cached (images do not change while serving)."""
        cached = self._image_cache.get(image_uuid)
        if cached is None:
            cached = gson.dumps(render_image(self.data.images[image_uuid], self.tz))
            self._image_cache[image_uuid] = cached
        return cached

    def inventories_body(self, image_uuids: tuple[str, ...]) -> bytes:
        """``{"inventories":[...]}`` for these images (unknown uuids skipped), cached per list."""
        cached = self._body_cache.get(image_uuids)
        if cached is None:
            parts = [self.image_json(u) for u in image_uuids if u in self.data.images]
            cached = b'{"inventories":[' + b",".join(parts) + b"]}"
            if len(self._body_cache) >= 32:
                self._body_cache.clear()
            self._body_cache[image_uuids] = cached
        return cached

    def replace_data(self, data: SimData) -> None:
        self.data = data
        self.sessions = self._session_store()
        self._image_cache.clear()
        self._body_cache.clear()

    def reset(self) -> None:
        """Back to the initial data and configuration; faults, log, stats and clock offset cleared."""
        self.replace_data(self._initial_data.copy())
        self.config = dataclasses.replace(self._initial_config)
        self.faults.clear()
        self.jobs = self._job_store()
        self.log.clear()
        self.stats.reset()
        self.clock_offset = 0.0
