"""What the simulated management node answers: plain-text REST errors, Gson JSON bodies, ErrorCodes.

Two families (contract §4.1): REST-layer failures are plain text with 400/403/404/405/500; everything
after the message reaches the bus is HTTP 503 with ``{"error": ErrorCode}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from zstack_sim import gson

__all__ = [
    "DESCRIPTIONS",
    "ELABORATIONS",
    "Reply",
    "error_code",
    "error_from_spec",
    "json_reply",
    "text_reply",
    "zstack_error",
]

# From conf/errorCodes/sys.xml and identity.xml of the open-source tree (contract §4.4).
DESCRIPTIONS: dict[str, str] = {
    "SYS.1000": "An internal error happened in system",
    "SYS.1001": "A message or a operation timeout",
    "SYS.1002": "Unable to create a resource",
    "SYS.1003": "A resource can not be found",
    "SYS.1004": "Unable to delete a resource",
    "SYS.1005": "Unable to change resource state",
    "SYS.1006": "An operation failed",
    "SYS.1007": "One or more API argument is invalid",
    "SYS.1008": "Unknown message, no service can deal with the message",
    "SYS.1009": "No route for message",
    "SYS.1010": "Management server is not ready to serve",
    "SYS.1011": "The message can not be delivered by Rabbitmq",
    "SYS.1012": "The management node is unavailable",
    "SYS.1017": "A message or a operation cancelled",
    "ID.1000": "Unable to authenticate a user",
    "ID.1001": "The session is invalid, either wrong session id or the session has been expired",
    "ID.1002": "The user doesn't have permission to perform the operation",
    "ID.1005": "The user has to change initial password",
    # [INF] ID.1006 is not in the open-source identity.xml; this wording is ours.
    "ID.1006": "The number of login sessions exceeds the maximum allowed",
    "PORTAL.1000": "No service defines this API message",
}

# Elaborations the MN attaches in its default zh_CN locale (contract §4.3).
ELABORATIONS: dict[str, str] = {
    "ID.1001": "错误信息: session 已过期，或者提供了不正确的 session id。",
}

# ErrorCodeList field order (contract §4.3); keys outside it follow, in the order given.
_ERROR_FIELDS = (
    "causes",
    "code",
    "description",
    "details",
    "elaboration",
    "location",
    "messages",
    "cost",
    "cause",
    "opaque",
)

ReplyKind = Literal["json", "text", "raw"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer. ``kind`` decides the Content-Type policy: "json" bodies get the configured
    content type (none by default), "text" bodies get none, "raw" bodies get exactly ``headers``."""

    status: int
    body: bytes
    kind: ReplyKind
    headers: tuple[tuple[str, str], ...] = ()
    # None: Tomcat 8.5+ style, no reason phrase on the status line [INF]; a string is sent as given.
    reason: str | None = None


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode("utf-8"), "text")


def json_reply(status: int, body: Any) -> Reply:
    return Reply(status, gson.dumps(body), "json")


def error_code(
    code: str,
    details: str | None,
    *,
    description: str | None = None,
    elaboration: str | None = None,
    location: str | None = None,
    cost: str | None = None,
    cause: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ErrorCode object in serialized field order; ``description`` defaults from the code table."""
    values: dict[str, Any] = dict(extra or {})
    values.update(
        code=code,
        description=description if description is not None else DESCRIPTIONS.get(code),
        details=details,
        elaboration=elaboration,
        location=location,
        cost=cost,
        cause=cause,
    )
    ordered = {k: values[k] for k in _ERROR_FIELDS if values.get(k) is not None}
    ordered.update({k: v for k, v in values.items() if k not in ordered and v is not None})
    return ordered


def error_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """An ErrorCode from a fault rule's spec (``code``, ``details`` and optional fields, nested
    ``cause``); unknown keys (e.g. newer builds' ``globalErrorCode``) are passed through."""
    known = {"code", "details", "description", "elaboration", "location", "cost", "cause"}
    cause = spec.get("cause")
    return error_code(
        str(spec.get("code", "SYS.1000")),
        spec.get("details"),
        description=spec.get("description"),
        elaboration=spec.get("elaboration"),
        location=spec.get("location"),
        cost=spec.get("cost"),
        cause=error_from_spec(cause) if isinstance(cause, dict) else None,
        extra={k: v for k, v in spec.items() if k not in known},
    )


def zstack_error(code: str, details: str, *, cost_ms: int = 0, **kw: Any) -> Reply:
    """HTTP 503 with ``{"error": ErrorCode}``; the elaboration defaults from the zh_CN table."""
    kw.setdefault("elaboration", ELABORATIONS.get(code))
    return json_reply(503, {"error": error_code(code, details, cost=f"{cost_ms}ms", **kw)})
