"""Path routing as ZStack's ``RestServer`` does it (contract §1, §2.4).

The server decodes the request URI (``URLDecoder``: ``%XX`` as UTF-8 and ``+`` as a space), strips the
``/zstack`` context and matches the rest with Spring's ``AntPathMatcher``: exact pattern first, then the
patterns; ``{var}`` matches one path segment; empty segments are ignored; a trailing slash never
matches a pattern without one. Everything under ``/v1`` that matches nothing is a plain-text 404
``no api mapping to <decoded path>``; ``/v1/api-jobs/{uuid}`` is checked before the API table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote_plus

__all__ = ["CONTEXT", "Route", "RouteMatch", "decode_path", "match_route"]

CONTEXT = "/zstack"


class Route(enum.Enum):
    ISO_CANDIDATES = "iso_candidates"
    ATTACH_ISO = "attach_iso"
    DETACH_ISO = "detach_iso"
    CANDIDATE_VMS = "candidate_vms"
    LOGIN = "login"
    LOGOUT = "logout"
    VALIDATE_SESSION = "validate_session"
    READY = "ready"
    API_JOBS = "api_jobs"
    UNMAPPED = "unmapped"  # under /v1, no API: 404 "no api mapping to ..."
    OUTSIDE_V1 = "outside_v1"  # under /zstack but not /v1: the container's own 404 page


# Pattern -> route, in the API table's normalized form ({0} = one path variable).
_API_PATTERNS: dict[str, Route] = {
    "/v1/vm-instances/{0}/iso-candidates": Route.ISO_CANDIDATES,
    "/v1/vm-instances/{0}/iso/{1}": Route.ATTACH_ISO,
    "/v1/vm-instances/{0}/iso": Route.DETACH_ISO,
    "/v1/images/iso/{0}/vm-candidates": Route.CANDIDATE_VMS,
    "/v1/accounts/login": Route.LOGIN,
    "/v1/accounts/sessions/{0}": Route.LOGOUT,
    "/v1/accounts/sessions/{0}/valid": Route.VALIDATE_SESSION,
    "/v1/management-nodes/ready": Route.READY,
}
_ASYNC_JOB_PATTERN = "/v1/api-jobs/{0}"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    # The API path without the context, URL-decoded (what error texts show).
    path: str
    # The path variable ({0}), if the pattern has one.
    variable: str | None = None
    # Every path variable ({0}, {1} ...), in order.
    variables: tuple[str, ...] = ()


def decode_path(raw_path: str) -> str:
    """The raw request path (no query) decoded like ``URLDecoder.decode(..., "UTF-8")``."""
    return unquote_plus(raw_path, encoding="utf-8", errors="replace")


def _ant_match(pattern: str, path: str) -> tuple[bool, tuple[str, ...]]:
    if path.startswith("/") != pattern.startswith("/"):
        return False, ()
    if path.endswith("/") and not pattern.endswith("/"):
        return False, ()
    pattern_tokens = [t for t in pattern.split("/") if t]
    path_tokens = [t for t in path.split("/") if t]
    if len(pattern_tokens) != len(path_tokens):
        return False, ()
    variables: list[str] = []
    for want, have in zip(pattern_tokens, path_tokens, strict=True):
        if want.startswith("{") and want.endswith("}"):
            variables.append(have)
        elif want != have:
            return False, ()
    return True, tuple(variables)


def match_route(context_path: str) -> RouteMatch:
    """Route a decoded path that has had the ``/zstack`` context removed (e.g. ``/v1/...``)."""
    path = context_path
    if not (path == "/v1" or path.startswith("/v1/")):
        return RouteMatch(Route.OUTSIDE_V1, path)
    ok, variables = _ant_match(_ASYNC_JOB_PATTERN, path)
    if ok:
        return RouteMatch(Route.API_JOBS, path, variables[0], variables)
    exact = _API_PATTERNS.get(path)
    if exact is not None:
        return RouteMatch(exact, path)
    for pattern, route in _API_PATTERNS.items():
        ok, variables = _ant_match(pattern, path)
        if ok:
            return RouteMatch(route, path, variables[0] if variables else None, variables)
    return RouteMatch(Route.UNMAPPED, path)
