"""A client of the simulator's control plane (``/_sim/...``, see :mod:`zstack_sim.control`), for the
tests and benchmarks that drive a simulator over HTTP, in a thread of their own process or as a
``zstack-sim`` process.

Plain ``urllib`` on a fresh connection per call, never through a proxy from the environment (the
simulator is on loopback). A call the simulator refuses raises :class:`ControlError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

__all__ = ["READINESS_PATH", "ControlError", "SimControl"]

#: The path of the gateway's background readiness checks, which :meth:`SimControl.zstack_requests`
#: leaves out.
READINESS_PATH = "/zstack/v1/management-nodes/ready"

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ControlError(RuntimeError):
    """The simulator answered a control call with an error status."""


class SimControl:
    """The control plane of the simulator at ``url`` (``http://HOST:PORT``)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the simulator's URL must be http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: object = None) -> Any:
        """``method`` on ``path`` (``/_sim/...``) with ``body`` as JSON; the answer's JSON (None
        for an empty answer)."""
        data = None if body is None else json.dumps(body).encode()
        # The scheme is http(s), checked in __init__.
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _NO_PROXY.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:300]
            raise ControlError(f"{method} {path} answered {exc.code}: {text}") from None
        return json.loads(raw) if raw.strip() else None

    # --- data, config, clock ---------------------------------------------------------------------

    def reset(self) -> None:
        """Initial data and config back; faults, request log, stats and clock cleared."""
        self.call("POST", "/_sim/reset", {})

    def config(self, **settings: object) -> dict[str, Any]:
        """Change some of the simulator's settings (``latency_ms``, ``session_timeout``,
        ``max_sessions``, ``content_type``, ``check_time_zone``); all of them after the change."""
        result: dict[str, Any] = self.call("POST", "/_sim/config", settings)
        return result

    def set_ready(self, ready: bool) -> None:
        """What ``/zstack/v1/management-nodes/ready`` says from now on."""
        self.call("POST", "/_sim/ready", {"ready": ready})

    def set_vm(
        self,
        uuid: str,
        *,
        state: str | None = None,
        candidates: Iterable[str] | None = None,
        cd_roms: int | None = None,
    ) -> None:
        """Change a VM's state, its ISO candidates (image uuids the data knows, in reply order) or
        its number of CD-ROMs (0..3; new ones are empty)."""
        change: dict[str, object] = {}
        if cd_roms is not None:
            change["cdRoms"] = cd_roms
        if state is not None:
            change["state"] = state
        if candidates is not None:
            change["candidates"] = list(candidates)
        self.call("POST", f"/_sim/vms/{uuid}", change)

    def vm(self, uuid: str) -> dict[str, Any]:
        """The VM's VmInstanceInventory as the simulated ZStack would send it."""
        result: dict[str, Any] = self.call("GET", f"/_sim/vms/{uuid}")
        return result

    def jobs(self) -> list[dict[str, Any]]:
        """The async jobs the simulator holds (``uuid``, ``api``, ``method``, ``path``, ``done``,
        ``status``), oldest first."""
        result: list[dict[str, Any]] = self.call("GET", "/_sim/jobs")["jobs"]
        return result

    def accepted_jobs(self) -> list[str]:
        """The uuid of every async job accepted since the last reset, in order (purged ones too):
        how many times a mutation was executed."""
        result: list[str] = self.call("GET", "/_sim/jobs")["accepted"]
        return result

    def advance_clock(self, seconds: float) -> None:
        """Move the management node's clock forward (session expiry, login dates, AccessKey dates)."""
        self.call("POST", "/_sim/clock", {"advance": seconds})

    def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/_sim/sessions")
        return result

    def expire_session(self, uuid: str) -> None:
        self.call("POST", f"/_sim/sessions/{uuid}/expire", {})

    # --- faults ----------------------------------------------------------------------------------

    def fault(self, **rule: object) -> dict[str, Any]:
        """Add a fault rule (see :mod:`zstack_sim.faults`); the rule as the simulator holds it."""
        result: dict[str, Any] = self.call("POST", "/_sim/faults", rule)
        return result

    def faults(self) -> list[dict[str, Any]]:
        """The active fault rules."""
        result: list[dict[str, Any]] = self.call("GET", "/_sim/faults")
        return result

    def clear_faults(self) -> None:
        self.call("DELETE", "/_sim/faults")

    # --- what the simulator saw ------------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        """Every ``/zstack`` request received, oldest first (``method``, ``path``, ``query``,
        ``headers``, ``body``, ``time``)."""
        result: list[dict[str, Any]] = self.call("GET", "/_sim/requests")
        return result

    def zstack_requests(self) -> list[dict[str, Any]]:
        """Requests to ZStack's API made on behalf of callers: :meth:`requests` without the
        gateway's background readiness checks (``READINESS_PATH``)."""
        return [r for r in self.requests() if r["path"] != READINESS_PATH]

    def stats(self) -> dict[str, Any]:
        """``total_requests``, ``by_route``, ``by_status``, ``faults``, ``in_flight``,
        ``in_flight_peak``, ``handling_cost_mean_us``."""
        result: dict[str, Any] = self.call("GET", "/_sim/stats")
        return result

    def clear_stats(self) -> None:
        self.call("DELETE", "/_sim/stats")
