"""The aiohttp application: ``/zstack/...`` (the simulated MN) and ``/_sim/...`` (the control plane).

Order for a ``/zstack`` request: log it, route it, global latency (iso-candidates only), fault rules
that act before auth, the API's checks, fault rules that act after auth (only for calls that passed
the checks), the API's answer, delivery (possibly reshaped by a fault rule).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from zstack_sim import control, delivery
from zstack_sim.api import Call, Incoming, ZStackApi
from zstack_sim.faults import BODY_ACTIONS, FaultRule
from zstack_sim.replies import Reply, error_from_spec, json_reply
from zstack_sim.routing import CONTEXT, Route, decode_path, match_route
from zstack_sim.state import SimState

__all__ = ["STATE", "STOPPING", "build_app"]

STATE = web.AppKey("zstack_sim_state", SimState)
STOPPING = web.AppKey("zstack_sim_stopping", asyncio.Event)


def _header_dict(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("utf-8", "replace")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _fault_reply(rule: FaultRule) -> Reply:
    """The reply of a ``respond`` or ``zstack_error`` rule."""
    params = rule.params
    if rule.action == "zstack_error":
        error = error_from_spec({k: v for k, v in params.items() if k != "status"})
        reply = json_reply(503, {"error": error})
        return Reply(int(params.get("status", 503)), reply.body, "json")
    body: Any = params.get("body", "")
    if isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    status = int(params["status"])
    reason = params.get("reason")
    return Reply(
        status,
        data,
        "raw",
        tuple(params.get("headers", {}).items()),
        reason if isinstance(reason, str) else delivery.standard_reason(status),
    )


class ZStackHandler:
    def __init__(self, state: SimState, stopping: asyncio.Event) -> None:
        self.state = state
        self.stopping = stopping
        self.api = ZStackApi(state)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        started = time.perf_counter_ns()
        raw_path = request.raw_path.partition("?")[0]
        incoming = Incoming(
            method=request.method,
            raw_path=raw_path,
            query=list(request.rel_url.query.items()),
            headers=request.headers,
            body=body,
            started_ns=started,
        )
        entry: dict[str, Any] = {
            "method": incoming.method,
            "path": raw_path,
            "query": [[k, v] for k, v in incoming.query],
            "headers": _header_dict(request),
            "body": body.decode("utf-8", "replace"),
            "time": time.time(),
            # The API parameters as the server read them (set once the REST layer accepted the call).
            "params": None,
        }
        self.state.log.append(entry)
        match = match_route(decode_path(raw_path[len(CONTEXT) :]))
        stats = self.state.stats
        stats.begin(match.route.value)
        try:
            return await self._serve(request, Call(incoming, match, log_entry=entry), started)
        finally:
            stats.end()

    async def _serve(self, request: web.Request, call: Call, started: int) -> web.StreamResponse:
        state = self.state
        cost = time.perf_counter_ns() - started
        latency = state.config.latency_ms / 1000 if call.match.route is Route.ISO_CANDIDATES else 0.0
        if latency > 0 and await delivery.pause(latency, self.stopping):
            await delivery.abort_connection(request)

        early, reshape = await self._fault(request, call, after_auth=False)
        if early is not None:
            return early

        t0 = time.perf_counter_ns()
        reply = self.api.check(call)
        cost += time.perf_counter_ns() - t0
        if reply is None:
            early, after = await self._fault(request, call, after_auth=True)
            if early is not None:
                return early
            reshape = after or reshape
            t0 = time.perf_counter_ns()
            reply = self.api.answer(call)
            cost += time.perf_counter_ns() - t0

        state.stats.by_status[reply.status] += 1
        if reshape is not None:
            return await self._reshape(request, reshape, reply)
        t0 = time.perf_counter_ns()
        response = delivery.make_response(reply, state.config.content_type)
        state.stats.add_cost(cost + time.perf_counter_ns() - t0)
        return response

    async def _fault(
        self, request: web.Request, call: Call, *, after_auth: bool
    ) -> tuple[web.StreamResponse | None, FaultRule | None]:
        """Apply the fault rule for this point of handling, if one matches: the reply it sent in
        place of the real one, and the rule when it reshapes the real body instead."""
        rule = self.state.faults.take(call.incoming.raw_path, after_auth=after_auth)
        if rule is None:
            return None, None
        early = await self._act(request, rule)
        return early, (rule if early is None and rule.action in BODY_ACTIONS else None)

    async def _act(self, request: web.Request, rule: FaultRule) -> web.StreamResponse | None:
        """Run a rule's delay and, for actions that replace the reply, the action itself."""
        self.state.stats.faults[rule.action] += 1
        if await delivery.pause(rule.delay, self.stopping):
            await delivery.abort_connection(request)
        if rule.action in ("respond", "zstack_error"):
            reply = _fault_reply(rule)
            self.state.stats.by_status[reply.status] += 1
            return delivery.make_response(reply, self.state.config.content_type)
        if rule.action == "reset":
            await delivery.abort_connection(request)
        if rule.action == "hang":
            await delivery.hold(request, self.stopping)
        return None  # delay_only, or an action that reshapes the normal reply

    async def _reshape(self, request: web.Request, rule: FaultRule, reply: Reply) -> web.StreamResponse:
        content_type = self.state.config.content_type
        if rule.action == "truncate":
            cut = Reply(
                reply.status, reply.body[: len(reply.body) // 2], reply.kind, reply.headers, reply.reason
            )
            return delivery.make_response(cut, content_type)
        response = await delivery.prepare_stream(request, reply, content_type)
        if rule.action == "reset_mid_body":
            await response.write(reply.body[: max(1, len(reply.body) // 2)])
            await delivery.abort_connection(request)
        if rule.action == "drip":
            interval = float(rule.params.get("interval", 0.5))
            finish = rule.params.get("finish") is True
            step = int(rule.params.get("bytes", 1))
            last = len(reply.body) if finish else len(reply.body) - 1
            for i in range(0, max(0, last), step):
                await response.write(reply.body[i : min(i + step, last)])
                if await delivery.pause(interval, self.stopping):
                    await delivery.abort_connection(request)
            if finish:
                await response.write_eof()
                return response
        # headers_then_silence, or a drip that never finishes.
        await delivery.hold(request, self.stopping)


def build_app(state: SimState, stopping: asyncio.Event) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = state
    app[STOPPING] = stopping
    control.add_routes(app, state)
    zstack = ZStackHandler(state, stopping)
    app.router.add_route("*", CONTEXT, zstack.handle)
    app.router.add_route("*", CONTEXT + "/{tail:.*}", zstack.handle)
    app.on_response_prepare.append(delivery.strip_headers)
    return app
