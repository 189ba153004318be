"""The gateway's one error model: every failure becomes a :class:`GatewayError`, which
:mod:`zstack_gateway.status` sends as one gRPC status.

This module is the only place that decides which gRPC code a failure gets. It classifies:

* ZStack business errors (HTTP 503 with ``{"error": ErrorCode}``) on ``error.code``, never on the HTTP
  status, because ZStack answers every business failure with 503;
* ZStack's plain-text REST-layer errors (400/403/404/500) and anything else that is not ZStack JSON
  (a proxy's HTML page, a 202 on a synchronous API);
* transport failures (refused, reset, timed out) and responses the gateway cannot read.

A GatewayError carries a message a person can act on by itself, the ZStack ``ErrorCode`` (as it came,
or one the gateway made), the ErrorInfo reason (a name from :class:`Reason`), and what the status
needs besides (field violations for BadRequest, a retry delay for RetryInfo).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import grpc
from zstack.v1 import error_pb2

from zstack_gateway import bounded_json
from zstack_gateway.error_json import CUT_MARK, error_code_from_json

#: ErrorInfo domain of every error the gateway returns.
DOMAIN = "zstack-gateway.zstack.io"


class Reason(enum.StrEnum):
    """ErrorInfo reasons of the failures the gateway describes itself (AIP-193: UPPER_SNAKE_CASE).
    A ZStack business error's reason is made from its code instead: ``ZSTACK_SYS_1003``."""

    # The request or the caller
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
    CALLER_TOKEN_MISSING = "CALLER_TOKEN_MISSING"  # noqa: S105 (a reason, not a token)
    CALLER_TOKEN_INVALID = "CALLER_TOKEN_INVALID"  # noqa: S105 (a reason, not a token)
    CALLER_ZSTACK_CREDENTIALS_REFUSED = "CALLER_ZSTACK_CREDENTIALS_REFUSED"
    # ZStack's answers
    ZSTACK_REJECTED_CREDENTIALS = "ZSTACK_REJECTED_CREDENTIALS"
    ZSTACK_BAD_REQUEST = "ZSTACK_BAD_REQUEST"
    ZSTACK_API_NOT_FOUND = "ZSTACK_API_NOT_FOUND"
    ZSTACK_UNEXPECTED_ASYNC_REPLY = "ZSTACK_UNEXPECTED_ASYNC_REPLY"
    ZSTACK_INTERNAL_ERROR = "ZSTACK_INTERNAL_ERROR"
    ZSTACK_UNEXPECTED_STATUS = "ZSTACK_UNEXPECTED_STATUS"
    ZSTACK_BAD_RESPONSE = "ZSTACK_BAD_RESPONSE"
    ZSTACK_ACCOUNT_REJECTED = "ZSTACK_ACCOUNT_REJECTED"
    ZSTACK_LOGIN_FAILED = "ZSTACK_LOGIN_FAILED"
    # ZStack's async jobs
    ZSTACK_DUPLICATE_JOB = "ZSTACK_DUPLICATE_JOB"
    ZSTACK_JOB_EXPIRED = "ZSTACK_JOB_EXPIRED"
    ZSTACK_JOB_STILL_RUNNING = "ZSTACK_JOB_STILL_RUNNING"
    # Reaching ZStack
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_DEADLINE_EXCEEDED = "UPSTREAM_DEADLINE_EXCEEDED"
    UPSTREAM_CONCURRENCY_LIMIT = "UPSTREAM_CONCURRENCY_LIMIT"
    UPSTREAM_IDENTITY_LIMIT = "UPSTREAM_IDENTITY_LIMIT"
    # The gateway's own limits and state
    GATEWAY_MEMORY_BUDGET = "GATEWAY_MEMORY_BUDGET"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    STREAM_IDLE_TIMEOUT = "STREAM_IDLE_TIMEOUT"
    GATEWAY_SHUTTING_DOWN = "GATEWAY_SHUTTING_DOWN"
    GATEWAY_INTERNAL = "GATEWAY_INTERNAL"


#: ZStack error code -> gRPC code. Codes not listed here map to UNKNOWN with the raw code kept.
ZSTACK_CODES: dict[str, grpc.StatusCode] = {
    "SYS.1000": grpc.StatusCode.INTERNAL,  # internal error
    "SYS.1001": grpc.StatusCode.UNAVAILABLE,  # timeout; DEADLINE_EXCEEDED when our deadline drove it
    "SYS.1003": grpc.StatusCode.NOT_FOUND,  # resource not found
    # "operation failed": classified by its cause when it has one (see from_zstack_error); without
    # one, what ZStack reports with it is the state of resources (an ISO already attached, no free
    # CD-ROM, a CD-ROM that does not exist or holds an ISO, several ISOs and no isoUuid).
    "SYS.1006": grpc.StatusCode.FAILED_PRECONDITION,
    "SYS.1007": grpc.StatusCode.INVALID_ARGUMENT,  # invalid argument
    "SYS.1009": grpc.StatusCode.UNAVAILABLE,  # no route to the owning management node
    "SYS.1010": grpc.StatusCode.UNAVAILABLE,  # management node not ready
    "SYS.1011": grpc.StatusCode.UNAVAILABLE,  # message undeliverable
    "SYS.1012": grpc.StatusCode.UNAVAILABLE,  # management node unavailable
    "ID.1000": grpc.StatusCode.UNAUTHENTICATED,  # authentication failed
    "ID.1001": grpc.StatusCode.UNAUTHENTICATED,  # invalid or expired session
    "ID.1002": grpc.StatusCode.PERMISSION_DENIED,  # permission denied
    "ID.1006": grpc.StatusCode.RESOURCE_EXHAUSTED,  # too many sessions
    "VM.1010": grpc.StatusCode.FAILED_PRECONDITION,  # the VM's state does not allow the operation
}

#: ZStack codes whose meaning is the one of their cause, when they carry one.
_CLASSIFIED_BY_CAUSE = frozenset({"SYS.1006"})
#: How deep a cause chain is followed to classify an error.
_MAX_CAUSE_STEPS = 8

#: Newer ZStack builds send a global error code beside the classic one; these mean "invalid session".
SESSION_GLOBAL_CODES = frozenset({"ORG_ZSTACK_IDENTITY_10020", "ORG_ZSTACK_IDENTITY_10006"})

# ZStack codes are short ("SYS.1003", "ORG_ZSTACK_IDENTITY_10020"): a message or ErrorInfo quotes at
# most this much of one.
MAX_CODE_BYTES = 128
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
    # Extra ErrorInfo metadata, e.g. ``jobUuid`` for an error of a ZStack job.
    info_metadata: Mapping[str, str] = field(default_factory=dict)
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
    retry_after: float | None = None,
) -> GatewayError:
    return GatewayError(
        code=code,
        message=message,
        reason=reason,
        error_code=gateway_error_code(reason, message, details),
        http_status=http_status,
        retryable=retryable,
        retry_after=retry_after,
    )


# ---------------------------------------------------------------------------------------------
# Classification


def from_zstack_error(
    error_code: error_pb2.ErrorCode, http_status: int, *, deadline_sent: bool
) -> GatewayError:
    """Classify a ZStack ErrorCode. ``deadline_sent``: the call told ZStack the caller's deadline
    (X-API-Timeout), so a ZStack timeout (SYS.1001) means the caller's deadline ran out."""
    zcode = error_code.code
    code = _grpc_code(error_code, deadline_sent)
    text = cut(error_code.details or error_code.description or "no details given", _MESSAGE_TEXT_CHARS)
    label = cut(zcode or error_code.global_error_code or "error without a code", MAX_CODE_BYTES)
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


def _grpc_code(error_code: error_pb2.ErrorCode, deadline_sent: bool) -> grpc.StatusCode:
    """The gRPC code of a ZStack ErrorCode. SYS.1006 ("operation failed") takes its cause's code
    when it has a cause (a VM in the wrong state: SYS.1006 caused by VM.1010, FAILED_PRECONDITION);
    a cause of an unknown code makes it UNKNOWN, no cause FAILED_PRECONDITION."""
    for _ in range(_MAX_CAUSE_STEPS):
        zcode = error_code.code
        if zcode == "SYS.1001" and deadline_sent:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        if error_code.global_error_code in SESSION_GLOBAL_CODES:
            return grpc.StatusCode.UNAUTHENTICATED
        if zcode in _CLASSIFIED_BY_CAUSE and error_code.HasField("cause"):
            error_code = error_code.cause
            continue
        return ZSTACK_CODES.get(zcode, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


def from_http_response(status: int, body: bytes, *, deadline_sent: bool) -> GatewayError:
    """Classify a non-200 ZStack answer (or a 200 whose body is not the expected JSON)."""
    parsed = _zstack_error_body(body)
    if parsed is not None:
        return from_zstack_error(parsed, status, deadline_sent=deadline_sent)
    text = _excerpt(body)
    if status == 400 and text.startswith("Duplicate job uuid["):
        # The job already exists (running, or done within ZStack's ~3 h retention): the request was
        # refused, not run again. The gateway polls that job instead (zstack_gateway.jobs).
        return _gateway(
            grpc.StatusCode.ALREADY_EXISTS,
            Reason.ZSTACK_DUPLICATE_JOB,
            f"ZStack already has this job: {text}",
            http_status=status,
        )
    if status == 404 and text == "the job has been expired":
        return _gateway(
            grpc.StatusCode.NOT_FOUND,
            Reason.ZSTACK_JOB_EXPIRED,
            "ZStack no longer has the job (unknown, or finished more than about 3 hours ago and "
            "purged); its outcome cannot be read any more: check the resource itself",
            http_status=status,
        )
    if status == 400:
        if re.search(r"authori[sz]ation|'date'|accesskey", text, re.IGNORECASE):
            return _gateway(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.ZSTACK_REJECTED_CREDENTIALS,
                f"ZStack rejected the credentials (HTTP 400): {text}",
                http_status=status,
            )
        return _gateway(
            grpc.StatusCode.INTERNAL,
            Reason.ZSTACK_BAD_REQUEST,
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
            Reason.ZSTACK_REJECTED_CREDENTIALS,
            f"ZStack refused the request (HTTP {status}): {text}{hint}",
            http_status=status,
        )
    if status == 404:
        return _gateway(
            grpc.StatusCode.UNIMPLEMENTED,
            Reason.ZSTACK_API_NOT_FOUND,
            f"ZStack has no such API (HTTP 404: {text}); check --zstack-url and the ZStack version",
            http_status=status,
        )
    if status in (502, 503, 504):
        return _gateway(
            grpc.StatusCode.UNAVAILABLE,
            Reason.UPSTREAM_UNAVAILABLE,
            f"ZStack is unavailable: HTTP {status} without a ZStack error body ({text})",
            http_status=status,
            retryable=True,
        )
    if status == 202:
        return _gateway(
            grpc.StatusCode.INTERNAL,
            Reason.ZSTACK_UNEXPECTED_ASYNC_REPLY,
            "ZStack answered 202 Accepted to a synchronous API, whose answer never comes as a job",
            http_status=status,
        )
    if 500 <= status < 600:
        return _gateway(
            grpc.StatusCode.INTERNAL,
            Reason.ZSTACK_INTERNAL_ERROR,
            f"ZStack failed with HTTP {status}: {text or '(empty body)'}",
            http_status=status,
        )
    return _gateway(
        grpc.StatusCode.UNKNOWN,
        Reason.ZSTACK_UNEXPECTED_STATUS,
        f"ZStack answered HTTP {status}: {text or '(empty body)'}",
        http_status=status,
    )


def bad_response(reason_text: str, *, http_status: int | None = 200) -> GatewayError:
    """A ZStack answer the gateway cannot read (invalid JSON, wrong shape, a body over the cap)."""
    return _gateway(
        grpc.StatusCode.INTERNAL,
        Reason.ZSTACK_BAD_RESPONSE,
        f"ZStack sent a response the gateway cannot read: {reason_text}",
        http_status=http_status,
    )


def unavailable(reason_text: str, *, retryable: bool) -> GatewayError:
    """ZStack could not be reached or the connection broke."""
    return _gateway(
        grpc.StatusCode.UNAVAILABLE,
        Reason.UPSTREAM_UNAVAILABLE,
        f"ZStack is unreachable: {reason_text}",
        retryable=retryable,
    )


def deadline_exceeded(budget: float, *, caller_deadline: bool) -> GatewayError:
    whose = "the call's deadline" if caller_deadline else "the gateway's default timeout"
    return _gateway(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        Reason.UPSTREAM_DEADLINE_EXCEEDED,
        f"ZStack did not answer within {whose} ({budget:.3g} s)",
    )


def job_still_running(job_uuid: str, budget: float, *, caller_deadline: bool, accepted: bool) -> GatewayError:
    """The call's time ran out while its ZStack job ran (``accepted``) or before ZStack confirmed
    it. A ZStack job cannot be cancelled: it goes on. The ErrorInfo carries the job's uuid."""
    whose = "the call's deadline" if caller_deadline else "the gateway's default timeout"
    if accepted:
        text = (
            f"ZStack job {job_uuid} is still running; the gateway stopped waiting after {budget:.3g} s, "
            f"within {whose}. The job goes on inside ZStack: repeat the call with the same request_id "
            "to get its result"
        )
    else:
        text = (
            f"ZStack did not confirm job {job_uuid} within {whose} (the gateway waited {budget:.3g} s); "
            "it may run: repeat the call with the same request_id to find out"
        )
    err = _gateway(grpc.StatusCode.DEADLINE_EXCEEDED, Reason.ZSTACK_JOB_STILL_RUNNING, text)
    err.info_metadata = {"jobUuid": job_uuid}
    return err


def unauthenticated(message: str) -> GatewayError:
    return _gateway(grpc.StatusCode.UNAUTHENTICATED, Reason.MISSING_CREDENTIALS, message)


def invalid_argument(violations: Sequence[tuple[str, str]]) -> GatewayError:
    """A request that fails validation: one BadRequest field violation per problem."""
    text = "; ".join(f"{name}: {desc}" for name, desc in violations)
    err = _gateway(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, f"invalid request: {text}")
    err.field_violations = tuple(violations)
    return err


def overloaded(limit: int, waited: float) -> GatewayError:
    """Every upstream slot stayed busy while the call waited for one."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.UPSTREAM_CONCURRENCY_LIMIT,
        f"the gateway is already running {limit} calls to ZStack (--max-upstream-calls) and none "
        f"finished within {waited:.3g} s; try again later",
        retry_after=1.0,
    )


def identity_overloaded(share: int, total: int, waited: float) -> GatewayError:
    """The calls of the caller's identity held their whole share of upstream slots while the call
    waited for one; other identities' calls are not held up by them."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.UPSTREAM_IDENTITY_LIMIT,
        f"this caller's ZStack identity is already running {share} calls to ZStack, its share of "
        f"the gateway's {total} (--max-upstream-calls-per-identity), and none finished within "
        f"{waited:.3g} s; try again later",
        retry_after=1.0,
    )


def over_budget(limit: int, held: int) -> GatewayError:
    """An answer whose next bytes would pass the gateway's budget of bytes held for callers."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.GATEWAY_MEMORY_BUDGET,
        f"the gateway already holds {held} bytes of ZStack answers for callers, near its budget of "
        f"{limit} bytes (--max-held-bytes); try again later",
        retry_after=1.0,
    )


def image_too_large(index: int, size: int, limit: int) -> GatewayError:
    """The error ending a stream at an image that alone does not fit in one message."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.IMAGE_TOO_LARGE,
        f"image inventories[{index}] takes {size} bytes in a stream message, over the {limit}-byte "
        "limit of one message; the images before it were sent",
    )


def caller_token_refused(reason: Reason, message: str) -> GatewayError:
    """A call without a valid caller token (CALLER_TOKEN_MISSING or CALLER_TOKEN_INVALID)."""
    return _gateway(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def caller_zstack_credentials_refused(shown: str, acts_as: str, mode: str) -> GatewayError:
    """A caller that sends its own ZStack credentials to a gateway that holds its own."""
    err = _gateway(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.CALLER_ZSTACK_CREDENTIALS_REFUSED,
        f"this gateway calls ZStack as {acts_as} (--auth-mode {mode}) and does not take the "
        f"caller's ZStack credentials: remove the 'authorization: {shown} ...' metadata",
    )
    err.field_violations = (("metadata.authorization", f"'{shown} ...' is not accepted here"),)
    return err


def shutting_down() -> GatewayError:
    """A call that arrived while the gateway drains for shutdown; another replica can take it."""
    return _gateway(
        grpc.StatusCode.UNAVAILABLE, Reason.GATEWAY_SHUTTING_DOWN, "the gateway is shutting down; try again"
    )


def stream_idle(timeout: float) -> GatewayError:
    """A caller that read none of the stream's messages for ``timeout`` seconds: the gateway ends the
    call to free what it holds for it (the caller may never read the status either)."""
    return _gateway(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.STREAM_IDLE_TIMEOUT,
        f"the caller read nothing of the stream for {timeout:.3g} s (--stream-idle-timeout); "
        "the gateway ended the call",
    )


def internal(message: str = "internal error in the gateway") -> GatewayError:
    return _gateway(grpc.StatusCode.INTERNAL, Reason.GATEWAY_INTERNAL, message)


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
        text = cut(
            err.error_code.details or err.error_code.description or "credentials refused", _MESSAGE_TEXT_CHARS
        )
        return GatewayError(
            code=grpc.StatusCode.UNAUTHENTICATED,
            message=(
                f"ZStack rejected the gateway's account {account!r}: {text} "
                "(check --zstack-account and ZSTACK_PASSWORD / --password-file)"
            ),
            reason=Reason.ZSTACK_ACCOUNT_REJECTED,
            error_code=err.error_code,
            http_status=err.http_status,
        )
    if err.reason == Reason.ZSTACK_BAD_RESPONSE:
        code, reason = grpc.StatusCode.INTERNAL, Reason.ZSTACK_BAD_RESPONSE
    else:
        code, reason = grpc.StatusCode.UNAVAILABLE, Reason.ZSTACK_LOGIN_FAILED
    return GatewayError(
        code=code,
        message=f"{what} failed: {err.message}",
        reason=reason,
        error_code=err.error_code,
        http_status=err.http_status,
    )


def from_exception(exc: BaseException) -> GatewayError:
    """Any exception that reaches the RPC boundary, as a GatewayError (every failure the gateway
    expects is one, translation errors included). Unknown exceptions become a generic INTERNAL
    without their text (it may hold internals); the caller logs them."""
    if isinstance(exc, GatewayError):
        return exc
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


def cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long, a cut one ending with CUT_MARK."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(CUT_MARK))] + CUT_MARK
