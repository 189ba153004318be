"""The gateway's one error model: every failure becomes a :class:`GatewayError`, and every
GatewayError becomes one gRPC status.

This module is the only place that decides which gRPC code a failure gets. It classifies:

* ZStack business errors (HTTP 503 with ``{"error": ErrorCode}``) on ``error.code``, never on the HTTP
  status, because ZStack answers every business failure with 503;
* ZStack's plain-text REST-layer errors (400/403/404/500) and anything else that is not ZStack JSON
  (a proxy's HTML page, a 202 on a synchronous API);
* transport failures (refused, reset, timed out) and responses the gateway cannot read.

A status carries a message a person can act on by itself, the ZStack ``ErrorCode`` as a
``zstack.v1.ErrorCode`` detail, exactly one ``google.rpc.ErrorInfo`` and, for invalid requests, a
``google.rpc.BadRequest``. The details trailer is kept under :data:`MAX_DETAILS_BYTES`.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from zstack.v1 import error_pb2

from zstack_gateway import bounded_json
from zstack_gateway.translate import CUT_MARK, TranslationError, error_code_from_json

#: ErrorInfo domain of every error the gateway returns.
DOMAIN = "zstack-gateway.zstack.io"

#: ZStack error code -> gRPC code. Codes not listed here map to UNKNOWN with the raw code kept.
ZSTACK_CODES: dict[str, grpc.StatusCode] = {
    "SYS.1000": grpc.StatusCode.INTERNAL,  # internal error
    "SYS.1001": grpc.StatusCode.UNAVAILABLE,  # timeout; DEADLINE_EXCEEDED when our deadline drove it
    "SYS.1003": grpc.StatusCode.NOT_FOUND,  # resource not found
    "SYS.1007": grpc.StatusCode.INVALID_ARGUMENT,  # invalid argument
    "SYS.1009": grpc.StatusCode.UNAVAILABLE,  # no route to the owning management node
    "SYS.1010": grpc.StatusCode.UNAVAILABLE,  # management node not ready
    "SYS.1011": grpc.StatusCode.UNAVAILABLE,  # message undeliverable
    "SYS.1012": grpc.StatusCode.UNAVAILABLE,  # management node unavailable
    "ID.1000": grpc.StatusCode.UNAUTHENTICATED,  # authentication failed
    "ID.1001": grpc.StatusCode.UNAUTHENTICATED,  # invalid or expired session
    "ID.1002": grpc.StatusCode.PERMISSION_DENIED,  # permission denied
    "ID.1006": grpc.StatusCode.RESOURCE_EXHAUSTED,  # too many sessions
}

#: Newer ZStack builds send a global error code beside the classic one; these mean "invalid session".
SESSION_GLOBAL_CODES = frozenset({"ORG_ZSTACK_IDENTITY_10020", "ORG_ZSTACK_IDENTITY_10006"})

# Limits that keep the status trailers under gRPC's 8 KiB soft metadata limit whatever ZStack sends:
# the serialized google.rpc.Status stays under 4,500 bytes (6,000 once base64-encoded for
# grpc-status-details-bin), and grpc-message under 1,000 bytes as sent. grpc percent-encodes the
# message, so a non-ASCII character costs 3 bytes per UTF-8 byte: a Chinese one costs 9.
MAX_DETAILS_BYTES = 4500
MAX_MESSAGE_WIRE_BYTES = 1000
MAX_CAUSE_DEPTH = 8
# ZStack codes are short ("SYS.1003", "ORG_ZSTACK_IDENTITY_10020"); ErrorInfo metadata holds at most this.
MAX_CODE_BYTES = 128
MAX_FIELD_CHARS = 1024
# The text of a ZStack error quoted in a status message, at most (grpc-message is cut further).
_MESSAGE_TEXT_CHARS = 2000

_TEXT_EXCERPT_CHARS = 300


@dataclass
class GatewayError(Exception):
    """A failure on its way to the caller as one gRPC status.

    ``reason`` is the ErrorInfo reason (UPPER_SNAKE_CASE). ``error_code`` is ZStack's ErrorCode as
    it came, or one the gateway made for a failure that did not come as ZStack JSON.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    error_code: error_pb2.ErrorCode = field(default_factory=error_pb2.ErrorCode)
    http_status: int | None = None
    field_violations: Sequence[tuple[str, str]] = ()
    # True when repeating the upstream call cannot do harm (nothing reached ZStack's business logic).
    retryable: bool = False
    # Sent to the caller as google.rpc.RetryInfo: when trying again may succeed.
    retry_after: float | None = None
    # The grpc status built for this error, once: callers that share one upstream request share
    # this error, and each of them sends it. Setting any field above drops it.
    _status: grpc.Status | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _ERROR_FIELDS:
            object.__setattr__(self, "_status", None)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def zstack_code(self) -> str:
        return self.error_code.code


_ERROR_FIELDS = frozenset(f.name for f in fields(GatewayError) if f.name != "_status")


def gateway_error_code(reason: str, description: str, details: str = "") -> error_pb2.ErrorCode:
    """An ErrorCode for a failure that ZStack did not describe itself (code ``GATEWAY.<reason>``)."""
    ec = error_pb2.ErrorCode(code=f"GATEWAY.{reason}", description=description)
    if details:
        ec.details = details
    return ec


def _gateway(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    http_status: int | None = None,
    details: str = "",
    retryable: bool = False,
) -> GatewayError:
    return GatewayError(
        code=code,
        message=message,
        reason=reason,
        error_code=gateway_error_code(reason, message, details),
        http_status=http_status,
        retryable=retryable,
    )


# ---------------------------------------------------------------------------------------------
# Classification


def from_zstack_error(
    error_code: error_pb2.ErrorCode, http_status: int, *, deadline_sent: bool
) -> GatewayError:
    """Classify a ZStack ErrorCode. ``deadline_sent``: the call told ZStack the caller's deadline
    (X-API-Timeout), so a ZStack timeout (SYS.1001) means the caller's deadline ran out."""
    zcode = error_code.code
    if zcode == "SYS.1001" and deadline_sent:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    elif error_code.global_error_code in SESSION_GLOBAL_CODES:
        code = grpc.StatusCode.UNAUTHENTICATED
    else:
        code = ZSTACK_CODES.get(zcode, grpc.StatusCode.UNKNOWN)
    text = _cut(error_code.details or error_code.description or "no details given", _MESSAGE_TEXT_CHARS)
    label = _cut(zcode or error_code.global_error_code or "error without a code", MAX_CODE_BYTES)
    # AIP-193: a reason is UPPER_SNAKE_CASE and at most 63 characters.
    reason = (
        "ZSTACK_" + re.sub(r"[^A-Z0-9]+", "_", (zcode[:MAX_CODE_BYTES] or "UNKNOWN").upper()).strip("_")
    )[:63].rstrip("_")
    return GatewayError(
        code=code,
        message=f"ZStack {label}: {text}",
        reason=reason,
        error_code=error_code,
        http_status=http_status,
        retryable=zcode in ("SYS.1010", "SYS.1012"),
    )


def from_http_response(status: int, body: bytes, *, deadline_sent: bool) -> GatewayError:
    """Classify a non-200 ZStack answer (or a 200 whose body is not the expected JSON)."""
    parsed = _zstack_error_body(body)
    if parsed is not None:
        return from_zstack_error(parsed, status, deadline_sent=deadline_sent)
    text = _excerpt(body)
    if status == 400:
        if re.search(r"authori[sz]ation|'date'|accesskey", text, re.IGNORECASE):
            return _gateway(
                grpc.StatusCode.UNAUTHENTICATED,
                "ZSTACK_REJECTED_CREDENTIALS",
                f"ZStack rejected the credentials (HTTP 400): {text}",
                http_status=status,
            )
        return _gateway(
            grpc.StatusCode.INTERNAL,
            "ZSTACK_BAD_REQUEST",
            f"ZStack rejected the gateway's request (HTTP 400): {text}",
            http_status=status,
        )
    if status in (401, 403):
        hint = ""
        if "requestTimeTooSkewed" in text:
            hint = (
                "; the request's Date differs from ZStack's clock by more than 15 minutes: check the "
                "clocks and --access-key-date-zone"
            )
        return _gateway(
            grpc.StatusCode.UNAUTHENTICATED,
            "ZSTACK_REJECTED_CREDENTIALS",
            f"ZStack refused the request (HTTP {status}): {text}{hint}",
            http_status=status,
        )
    if status == 404:
        return _gateway(
            grpc.StatusCode.UNIMPLEMENTED,
            "ZSTACK_API_NOT_FOUND",
            f"ZStack has no such API (HTTP 404: {text}); check --zstack-url and the ZStack version",
            http_status=status,
        )
    if status in (502, 503, 504):
        return _gateway(
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            f"ZStack is unavailable: HTTP {status} without a ZStack error body ({text})",
            http_status=status,
            retryable=True,
        )
    if status == 202:
        return _gateway(
            grpc.StatusCode.INTERNAL,
            "ZSTACK_UNEXPECTED_ASYNC_REPLY",
            "ZStack answered 202 Accepted to a synchronous API; this gateway does not poll jobs",
            http_status=status,
        )
    if 500 <= status < 600:
        return _gateway(
            grpc.StatusCode.INTERNAL,
            "ZSTACK_INTERNAL_ERROR",
            f"ZStack failed with HTTP {status}: {text or '(empty body)'}",
            http_status=status,
        )
    return _gateway(
        grpc.StatusCode.UNKNOWN,
        "ZSTACK_UNEXPECTED_STATUS",
        f"ZStack answered HTTP {status}: {text or '(empty body)'}",
        http_status=status,
    )


def bad_response(reason_text: str, *, http_status: int | None = 200) -> GatewayError:
    """A ZStack answer the gateway cannot read (invalid JSON, wrong shape, a body over the cap)."""
    return _gateway(
        grpc.StatusCode.INTERNAL,
        "ZSTACK_BAD_RESPONSE",
        f"ZStack sent a response the gateway cannot read: {reason_text}",
        http_status=http_status,
    )


def unavailable(reason_text: str, *, retryable: bool) -> GatewayError:
    """ZStack could not be reached or the connection broke."""
    return _gateway(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        f"ZStack is unreachable: {reason_text}",
        retryable=retryable,
    )


def deadline_exceeded(budget: float, *, caller_deadline: bool) -> GatewayError:
    whose = "the call's deadline" if caller_deadline else "the gateway's default timeout"
    return _gateway(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_DEADLINE_EXCEEDED",
        f"ZStack did not answer within {whose} ({budget:.3g} s)",
    )


def unauthenticated(message: str) -> GatewayError:
    return _gateway(grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS", message)


def invalid_argument(violations: Sequence[tuple[str, str]]) -> GatewayError:
    """A request that fails validation: one BadRequest field violation per problem."""
    text = "; ".join(f"{name}: {desc}" for name, desc in violations)
    err = _gateway(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", f"invalid request: {text}")
    err.field_violations = tuple(violations)
    return err


def overloaded(limit: int, waited: float) -> GatewayError:
    """Every upstream slot stayed busy while the call waited for one."""
    err = _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_CONCURRENCY_LIMIT",
        f"the gateway is already running {limit} calls to ZStack (--max-upstream-calls) and none "
        f"finished within {waited:.3g} s; try again later",
    )
    err.retry_after = 1.0
    return err


def shutting_down() -> GatewayError:
    """A call that arrived while the gateway drains for shutdown; another replica can take it."""
    return _gateway(
        grpc.StatusCode.UNAVAILABLE, "GATEWAY_SHUTTING_DOWN", "the gateway is shutting down; try again"
    )


def stream_idle(timeout: float) -> GatewayError:
    """A caller that read none of the stream's messages for ``timeout`` seconds: the gateway ends the
    call to free what it holds for it (the caller may never read the status either)."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "STREAM_IDLE_TIMEOUT",
        f"the caller read nothing of the stream for {timeout:.3g} s (--stream-idle-timeout); "
        "the gateway ended the call",
    )


def internal(message: str = "internal error in the gateway") -> GatewayError:
    return _gateway(grpc.StatusCode.INTERNAL, "GATEWAY_INTERNAL", message)


#: ZStack's answers to a login with wrong credentials, or for an account that may not log in now
#: (must change its initial password, locked by the commercial login control).
ACCOUNT_REJECTED_CODES = frozenset({"ID.1000", "ID.1005", "LOGIN_CONTROL.1002"})


def login_failed(err: GatewayError, account: str) -> GatewayError:
    """A failed login of the gateway's own account (``err`` as classified from the login's answer
    or its transport failure), as the calls that needed the login see it:

    * the account rejected: UNAUTHENTICATED, ``ZSTACK_ACCOUNT_REJECTED``;
    * an answer the gateway cannot read: INTERNAL, ``ZSTACK_BAD_RESPONSE``;
    * anything else (ZStack's own errors, a proxy's page, a refused or broken connection, no answer
      in time): UNAVAILABLE, ``ZSTACK_LOGIN_FAILED``: the calls may work once ZStack does.

    ZStack's ErrorCode and the HTTP status stay in the details.
    """
    what = f"logging in to ZStack as account {account!r}"
    if err.zstack_code in ACCOUNT_REJECTED_CODES:
        text = _cut(
            err.error_code.details or err.error_code.description or "credentials refused", _MESSAGE_TEXT_CHARS
        )
        return GatewayError(
            code=grpc.StatusCode.UNAUTHENTICATED,
            message=(
                f"ZStack rejected the gateway's account {account!r}: {text} "
                "(check --zstack-account and ZSTACK_PASSWORD / --password-file)"
            ),
            reason="ZSTACK_ACCOUNT_REJECTED",
            error_code=err.error_code,
            http_status=err.http_status,
        )
    if err.reason == "ZSTACK_BAD_RESPONSE":
        code, reason = grpc.StatusCode.INTERNAL, "ZSTACK_BAD_RESPONSE"
    else:
        code, reason = grpc.StatusCode.UNAVAILABLE, "ZSTACK_LOGIN_FAILED"
    return GatewayError(
        code=code,
        message=f"{what} failed: {err.message}",
        reason=reason,
        error_code=err.error_code,
        http_status=err.http_status,
    )


def from_exception(exc: BaseException) -> GatewayError:
    """Any exception that reaches the RPC boundary, as a GatewayError. Unknown exceptions become a
    generic INTERNAL without their text (it may hold internals); the caller logs them."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TranslationError):
        return bad_response(f"{exc.field}: {exc.reason}")
    return internal()


def _zstack_error_body(body: bytes) -> error_pb2.ErrorCode | None:
    """ZStack's ``{"error": {...}}`` body as an ErrorCode, or None when the body is something else.

    The body is read leniently and within bounds (see :mod:`zstack_gateway.bounded_json`): a ZStack
    error is one whatever its bytes, its nesting or its size, and reading it costs little."""
    if _JSON_OBJECT_START.match(body) is None:
        return None
    try:
        obj = bounded_json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        return None
    return error_code_from_json(obj["error"])


_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def _excerpt(body: bytes) -> str:
    """A short, single-line, printable excerpt of a plain-text or HTML body."""
    text = body[: _TEXT_EXCERPT_CHARS * 4].decode("utf-8", "replace")
    if "<" in text and ">" in text:
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        text = title.group(1) if title else re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= _TEXT_EXCERPT_CHARS else text[:_TEXT_EXCERPT_CHARS] + "..."


# ---------------------------------------------------------------------------------------------
# GatewayError -> grpc.Status


def _wire_cost(char: str) -> int:
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "replace"))


def _cut_for_wire(text: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """``text`` cut so that grpc-message, percent-encoded as grpc sends it, takes at most ``limit``
    bytes (printable ASCII other than '%' goes as is, anything else as %XX per UTF-8 byte).

    Every character costs at least one byte, so at most ``limit + 1`` characters are looked at,
    however long the text."""
    budget = limit - len(CUT_MARK)
    used = 0
    for index, char in enumerate(text[: limit + 1]):
        cost = _wire_cost(char)
        if used + cost > budget:
            # The text is kept whole when the rest fits in the room the mark would take.
            rest = text[index : index + limit - used + 1]
            if len(rest) == len(text) - index and used + sum(map(_wire_cost, rest)) <= limit:
                return text
            return text[:index] + CUT_MARK
        used += cost
    return text


def _cut_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(CUT_MARK))] + CUT_MARK


def trimmed_error_code(
    ec: error_pb2.ErrorCode, *, max_depth: int = MAX_CAUSE_DEPTH, max_chars: int = MAX_FIELD_CHARS
) -> error_pb2.ErrorCode:
    """A copy of ``ec`` whose cause chain is at most ``max_depth`` deep and whose strings are at most
    ``max_chars`` long. Whatever is cut is marked in ``details``. Only what is kept is copied, so the
    cost does not grow with what ``ec`` holds beyond that."""
    out = error_pb2.ErrorCode()
    _copy_trimmed(ec, out, max_depth, max_chars)
    return out


def _copy_trimmed(
    src: error_pb2.ErrorCode, dst: error_pb2.ErrorCode, depth_left: int, max_chars: int
) -> None:
    for name in ("code", "description", "details", "elaboration", "location", "cost", "global_error_code"):
        if src.HasField(name):
            setattr(dst, name, _cut(getattr(src, name), max_chars))
    if src.HasField("opaque"):
        if src.opaque.ByteSize() > max_chars:
            dst.details = _cut(dst.details, max_chars) + " [opaque dropped by the gateway: too large]"
        else:
            dst.opaque.CopyFrom(src.opaque)
    if depth_left <= 0:
        if src.HasField("cause") or len(src.causes):
            dst.details = dst.details + " [deeper causes cut by the gateway]"
        return
    if src.HasField("cause"):
        dst.cause.SetInParent()
        _copy_trimmed(src.cause, dst.cause, depth_left - 1, max_chars)
    if len(src.causes) > 4:
        dst.details = dst.details + f" [{len(src.causes) - 4} more causes cut by the gateway]"
    for index in range(min(4, len(src.causes))):
        _copy_trimmed(src.causes[index], dst.causes.add(), depth_left - 1, max_chars)


def _error_info(err: GatewayError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN)
    if err.error_code.code and not err.error_code.code.startswith("GATEWAY."):
        info.metadata["zstackCode"] = _cut_bytes(err.error_code.code, MAX_CODE_BYTES)
    if err.error_code.global_error_code:
        info.metadata["zstackGlobalCode"] = _cut_bytes(err.error_code.global_error_code, MAX_CODE_BYTES)
    if err.http_status is not None:
        info.metadata["httpStatus"] = str(err.http_status)
    return info


def to_status_proto(err: GatewayError) -> status_pb2.Status:
    """The google.rpc.Status for ``err``, its serialized size under MAX_DETAILS_BYTES. Its cost is
    bounded whatever ``err`` holds: every string and cause list is cut before it is copied."""
    message = _cut_for_wire(err.message)
    extra: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(_error_info(err))
    extra.append(info)
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(datetime.timedelta(seconds=err.retry_after))
        packed_retry = any_pb2.Any()
        packed_retry.Pack(retry)
        extra.append(packed_retry)
    if err.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=_cut(d, 300))
                for f, d in list(err.field_violations)[:20]
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        extra.append(packed)
    # Shrink the ErrorCode until the whole status fits: fewer causes and shorter strings each round.
    for depth, chars in ((MAX_CAUSE_DEPTH, MAX_FIELD_CHARS), (4, 512), (2, 256), (0, 128), (0, 64)):
        ec_any = any_pb2.Any()
        ec_any.Pack(trimmed_error_code(err.error_code, max_depth=depth, max_chars=chars))
        status = status_pb2.Status(code=err.code.value[0], message=message, details=[ec_any, *extra])
        if status.ByteSize() <= MAX_DETAILS_BYTES:
            return status
    # Only a pathological ErrorInfo could get here: keep the code and the message.
    return status_pb2.Status(code=err.code.value[0], message=message)


def to_grpc_status(err: GatewayError) -> grpc.Status:
    """The grpc status for ``err``, built once per error: every caller that shares the error (calls
    coalesced on one upstream request) sends the same status."""
    status = err._status
    if status is None:
        status = rpc_status.to_status(to_status_proto(err))
        err._status = status
    return status


def encoded_details_size(err: GatewayError) -> int:
    """The size of the grpc-status-details-bin trailer as sent (base64), for tests and docs."""
    for key, value in to_grpc_status(err).trailing_metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return len(base64.b64encode(value))
    return 0
