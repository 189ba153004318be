"""The control plane for tests, benchmarks and demos: real HTTP under ``/_sim/`` (never under /zstack).

All bodies are JSON (``Content-Type: application/json``); a bad request gets 400 ``{"error": "..."}``.

======================================  ========================================================
``GET /_sim``                           this table, as JSON
``GET /_sim/requests``                  received /zstack requests, oldest first: ``method``, ``path``
                                        (raw, still percent-encoded, no query), ``query`` ([[k, v]],
                                        decoded, in order), ``headers`` (as received), ``body``, ``time``
``DELETE /_sim/requests``               clear that log
``GET /_sim/stats``                     ``total_requests``, ``by_route``, ``by_status``, ``faults``,
                                        ``in_flight``, ``in_flight_peak``, ``handling_cost_mean_us``
``DELETE /_sim/stats``                  zero the counters
``GET /_sim/faults``                    active fault rules
``POST /_sim/faults``                   add a rule (see ``zstack_sim.faults``); answers the rule
``DELETE /_sim/faults``                 remove every rule
``GET /_sim/config``                    ``latency_ms``, ``session_timeout``, ``max_sessions``,
                                        ``content_type``, ``check_time_zone``, ``ready``
``POST|PUT /_sim/config``               change some of them (partial object)
``POST /_sim/ready``                    ``{"ready": bool}``: what /v1/management-nodes/ready says
``GET /_sim/sessions``                  sessions with expiry and validity
``POST /_sim/sessions/{uuid}/expire``   expire a session now (404 if unknown)
``GET /_sim/clock``                     ``{"offset": s, "now": epoch}``
``POST /_sim/clock``                    ``{"advance": s}`` or ``{"offset": s}``: move the MN clock
                                        (session expiry, login dates, AccessKey Date checks)
``PATCH|POST /_sim/vms/{uuid}``         ``{"state": "...", "candidates": [...], "cdRoms": n}``:
                                        change a VM (``cdRoms``: how many CD-ROMs it has)
``GET /_sim/vms/{uuid}``                the VM's VmInstanceInventory as ZStack would send it
``GET /_sim/jobs``                      async jobs: ``jobs`` (uuid, api, method, path, done,
                                        status) and ``accepted`` (every job uuid ever accepted)
``POST /_sim/reset``                    initial data and config back; faults, log, stats, clock cleared
======================================  ========================================================
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from zstack_sim.data import CdRom, derived_uuid
from zstack_sim.faults import FaultSpecError
from zstack_sim.state import ConfigError, SimState

__all__ = ["add_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> Any:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from exc


class _Control:
    def __init__(self, state: SimState) -> None:
        self.state = state

    async def index(self, request: web.Request) -> web.Response:
        return web.json_response({"endpoints": __doc__})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.log.to_json())

    async def clear_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.state.log.clear()})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.stats.to_json())

    async def clear_stats(self, request: web.Request) -> web.Response:
        self.state.stats.reset()
        return web.json_response(self.state.stats.to_json())

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.faults.to_json())

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            rule = self.state.faults.add(await _json_body(request))
        except FaultSpecError as exc:
            return _bad(str(exc))
        return web.json_response(rule.to_json())

    async def clear_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.state.faults.clear()})

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.config.to_json())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            self.state.config.update(await _json_body(request))
        except ConfigError as exc:
            return _bad(str(exc))
        return web.json_response(self.state.config.to_json())

    async def set_ready(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("ready"), bool):
            return _bad('expected {"ready": true|false}')
        self.state.config.ready = body["ready"]
        return web.json_response({"ready": self.state.config.ready})

    async def get_sessions(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.sessions.snapshot())

    async def expire_session(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        if not self.state.sessions.expire(uuid):
            return _bad(f"no session {uuid}", 404)
        return web.json_response({"uuid": uuid, "expired": True})

    async def get_clock(self, request: web.Request) -> web.Response:
        return web.json_response({"offset": self.state.clock_offset, "now": self.state.now()})

    async def set_clock(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad('expected {"advance": seconds} or {"offset": seconds}')
        for key in ("advance", "offset"):
            value = body.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return _bad(f"'{key}' must be a number")
        if body.get("offset") is not None:
            self.state.clock_offset = float(body["offset"])
        if body.get("advance") is not None:
            self.state.clock_offset += float(body["advance"])
        return await self.get_clock(request)

    async def patch_vm(self, request: web.Request) -> web.Response:
        vm = self.state.data.vms.get(request.match_info["uuid"])
        if vm is None:
            return _bad(f"no vm {request.match_info['uuid']}", 404)
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad("expected a JSON object")
        state = body.get("state", vm.state)
        candidates = body.get("candidates", vm.candidates)
        if not isinstance(state, str):
            return _bad("'state' must be a string")
        if not isinstance(candidates, list) or not all(
            isinstance(c, str) and c in self.state.data.images for c in candidates
        ):
            return _bad("'candidates' must be a list of known image uuids")
        drives = body.get("cdRoms", len(vm.drives))
        if isinstance(drives, bool) or not isinstance(drives, int) or not 0 <= drives <= 3:
            return _bad("'cdRoms' must be an integer 0..3 (vm.maximumCdRomNum)")
        vm.state = state
        vm.candidates = list(candidates)
        roms = vm.drives[:drives]
        for device in range(len(roms), drives):
            roms.append(CdRom(derived_uuid(vm.uuid, f"cdrom-{device}"), device))
        vm.cd_roms = roms
        return web.json_response({"uuid": vm.uuid, "state": vm.state, "candidates": vm.candidates})

    async def get_vm(self, request: web.Request) -> web.Response:
        vm = self.state.data.vms.get(request.match_info["uuid"])
        if vm is None:
            return _bad(f"no vm {request.match_info['uuid']}", 404)
        return web.json_response(self.state.vm_json(vm))

    async def get_jobs(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.jobs.to_json())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"reset": True})


def add_routes(app: web.Application, state: SimState) -> None:
    c = _Control(state)
    table: list[tuple[str, str, _Handler]] = [
        ("GET", "/_sim", c.index),
        ("GET", "/_sim/requests", c.get_requests),
        ("DELETE", "/_sim/requests", c.clear_requests),
        ("GET", "/_sim/stats", c.get_stats),
        ("DELETE", "/_sim/stats", c.clear_stats),
        ("GET", "/_sim/faults", c.get_faults),
        ("POST", "/_sim/faults", c.add_fault),
        ("DELETE", "/_sim/faults", c.clear_faults),
        ("GET", "/_sim/config", c.get_config),
        ("POST", "/_sim/config", c.set_config),
        ("PUT", "/_sim/config", c.set_config),
        ("POST", "/_sim/ready", c.set_ready),
        ("GET", "/_sim/sessions", c.get_sessions),
        ("POST", "/_sim/sessions/{uuid}/expire", c.expire_session),
        ("GET", "/_sim/clock", c.get_clock),
        ("POST", "/_sim/clock", c.set_clock),
        ("PATCH", "/_sim/vms/{uuid}", c.patch_vm),
        ("POST", "/_sim/vms/{uuid}", c.patch_vm),
        ("GET", "/_sim/vms/{uuid}", c.get_vm),
        ("GET", "/_sim/jobs", c.get_jobs),
        ("POST", "/_sim/reset", c.reset),
    ]
    for method, path, handler in table:
        app.router.add_route(method, path, handler)
