"""Fault-injection rules (``POST /_sim/faults``).

A rule is one JSON object::

    {"action": "...",            // required, see below
     "path": "<regex>",          // re.search on the raw request path (no query); default: any
                                 // iso-candidates path
     "times": 2,                 // used this many times, then removed; default: unlimited
     "delay": 0.5,               // seconds to wait before acting; default 0
     "after_auth": false,        // default: act after routing, before any auth check; true: act only
                                 // once the request passed every check (session renewed, VM found)
     ...action fields...}        // flat, or nested under "params"

Actions and their fields:

* ``respond``: ``status`` (int), ``body`` (string sent as is, or any JSON value, sent compact),
  ``headers`` (object), optional ``reason``: a raw HTTP answer exactly as given (only the given
  headers, plus Content-Length/Date/Server): an HTML 502 from a proxy, a plain 500, a 202, a body of
  the wrong JSON shape...
* ``zstack_error``: ``code``, ``details`` and optional ``description`` (default from the code table),
  ``elaboration``, ``location``, ``cost``, ``cause`` (nested ErrorCode spec), any other ErrorCode field
  (e.g. ``globalErrorCode``), and ``status`` (HTTP status, default 503): ``{"error": ErrorCode}``.
* ``reset``: close the TCP connection (RST) without writing a status line.
* ``reset_mid_body``: the normal reply's status and headers with its real Content-Length, about half
  the body, then RST.
* ``drip``: ``interval`` (seconds, default 0.5): the normal reply's headers, then one body byte (or
  ``bytes`` bytes, default 1) per interval; by default it stops before the last byte and never
  finishes (``"finish": true`` sends it).
* ``headers_then_silence``: the normal reply's headers with its Content-Length, then nothing.
* ``hang``: never answer.
* ``truncate``: the normal reply with its body cut in half and a Content-Length matching the cut body
  (so the JSON is invalid).
* ``delay_only``: only the delay, then normal handling.
* ``job``: for async APIs (attach, detach; default path: both), how long the job the request starts
  runs: ``seconds`` (default: the configured ``job_seconds``), or ``"never": true`` for a job that
  never finishes (its poll answers 202 forever, as for a job lost with its management node). The
  request itself is answered normally (202). To break the connection *after* a job was accepted and
  before the 202 goes out, use ``reset`` with ``"after_auth": true`` on an async API's path; with
  ``after_auth`` false the reset comes before the job exists.

Anything that waits forever ends when the client goes away or the simulator stops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIONS", "DEFAULT_PATH", "FaultBook", "FaultRule", "FaultSpecError"]

DEFAULT_PATH = r"^/zstack/v1/vm-instances/[^/]+/iso-candidates$"
#: The default path of ``job`` rules: attach and detach.
JOB_DEFAULT_PATH = r"^/zstack/v1/vm-instances/[^/]+/iso(/[^/]+)?$"
ACTIONS = frozenset(
    {
        "respond",
        "zstack_error",
        "reset",
        "reset_mid_body",
        "drip",
        "headers_then_silence",
        "hang",
        "truncate",
        "delay_only",
        "job",
    }
)
# Actions that reshape the normal reply rather than replace it.
BODY_ACTIONS = frozenset({"reset_mid_body", "drip", "headers_then_silence", "truncate"})
_RULE_KEYS = frozenset({"action", "path", "times", "delay", "after_auth", "params"})


class FaultSpecError(ValueError):
    """A rule that cannot be used; the message says why."""


@dataclass
class FaultRule:
    id: int
    action: str
    path: re.Pattern[str]
    times: int | None
    delay: float
    after_auth: bool
    params: dict[str, Any] = field(default_factory=dict)
    used: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "path": self.path.pattern,
            "times": self.times,
            "delay": self.delay,
            "after_auth": self.after_auth,
            "params": self.params,
            "used": self.used,
        }


def _number(spec: dict[str, Any], key: str, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"'{key}' must be a number >= 0")
    return float(value)


def _check_params(action: str, params: dict[str, Any]) -> dict[str, Any]:
    if action == "respond":
        status = params.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise FaultSpecError("respond needs an integer 'status' in 100..599")
        headers = params.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise FaultSpecError("'headers' must be an object of strings")
        reason = params.get("reason")
        if reason is not None and (not isinstance(reason, str) or "\n" in reason or "\r" in reason):
            raise FaultSpecError("'reason' must be a one-line string")
    elif action == "zstack_error":
        if not isinstance(params.get("code"), str):
            raise FaultSpecError("zstack_error needs a string 'code'")
        status = params.get("status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise FaultSpecError("'status' must be an integer in 100..599")
    elif action == "job":
        _number(params, "seconds", 0.0)
        if not isinstance(params.get("never", False), bool):
            raise FaultSpecError("'never' must be a boolean")
    elif action == "drip":
        if _number(params, "interval", 0.5) <= 0:
            raise FaultSpecError("'interval' must be > 0")
        size = params.get("bytes", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise FaultSpecError("'bytes' must be an integer >= 1")
    return params


def parse_rule(spec: Any, rule_id: int) -> FaultRule:
    if not isinstance(spec, dict):
        raise FaultSpecError("a fault rule must be a JSON object")
    action = spec.get("action")
    if action not in ACTIONS:
        raise FaultSpecError(f"'action' must be one of {sorted(ACTIONS)}")
    pattern = spec.get("path", JOB_DEFAULT_PATH if action == "job" else DEFAULT_PATH)
    if not isinstance(pattern, str):
        raise FaultSpecError("'path' must be a regular expression string")
    try:
        path = re.compile(pattern)
    except re.error as exc:
        raise FaultSpecError(f"bad 'path' regex: {exc}") from exc
    times = spec.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise FaultSpecError("'times' must be a positive integer")
    after_auth = spec.get("after_auth", False)
    if not isinstance(after_auth, bool):
        raise FaultSpecError("'after_auth' must be a boolean")
    nested = spec.get("params", {})
    if not isinstance(nested, dict):
        raise FaultSpecError("'params' must be an object")
    params = {k: v for k, v in spec.items() if k not in _RULE_KEYS}
    params.update(nested)
    return FaultRule(
        id=rule_id,
        action=action,
        path=path,
        times=times,
        delay=_number(spec, "delay", 0.0),
        after_auth=after_auth,
        params=_check_params(action, params),
    )


class FaultBook:
    """The active rules, first added first matched."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, spec: Any) -> FaultRule:
        rule = parse_rule(spec, self._next_id)
        self._next_id += 1
        self._rules.append(rule)
        return rule

    def clear(self) -> int:
        count = len(self._rules)
        self._rules.clear()
        return count

    def take(self, path: str, *, after_auth: bool) -> FaultRule | None:
        """The first rule for this stage whose regex matches ``path``; uses up one of its times."""
        for rule in self._rules:
            if rule.action != "job" and rule.after_auth == after_auth and rule.path.search(path):
                return self._use(rule)
        return None

    def take_job(self, path: str) -> FaultRule | None:
        """The first ``job`` rule whose regex matches ``path``; uses up one of its times."""
        for rule in self._rules:
            if rule.action == "job" and rule.path.search(path):
                return self._use(rule)
        return None

    def _use(self, rule: FaultRule) -> FaultRule:
        rule.used += 1
        if rule.times is not None and rule.used >= rule.times:
            self._rules.remove(rule)
        return rule

    def to_json(self) -> list[dict[str, Any]]:
        return [rule.to_json() for rule in self._rules]

    def __len__(self) -> int:
        return len(self._rules)
