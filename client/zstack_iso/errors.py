"""ZStackError: the one exception a failed call raises, with the gateway's rich status decoded.

The gateway sends every failure as a gRPC status whose ``grpc-status-details-bin`` trailer holds a
``google.rpc.Status`` with these details:

* a ``zstack.v1.ErrorCode``: ZStack's error as ZStack sent it, or one the gateway made itself for a
  failure that did not come from ZStack (its code then starts with ``GATEWAY.``);
* exactly one ``google.rpc.ErrorInfo``: a machine-readable ``reason`` and metadata holding the ZStack
  code (``zstackCode``) and the upstream HTTP status (``httpStatus``);
* for INVALID_ARGUMENT, a ``google.rpc.BadRequest`` naming each bad field.

A failure that never reached the gateway (a refused connection, an expired deadline) has no details:
only ``code`` and ``message`` are set then.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from zstack.v1 import error_pb2

__all__ = ["ZStackError"]

_M = TypeVar("_M", bound=Message)


class ZStackError(Exception):
    """A failed call to the gateway: its gRPC status and whatever details came with it.

    Attributes:
        code: the gRPC status code.
        message: the status message, meant to be read by a person.
        error_code: the ``zstack.v1.ErrorCode`` detail, or None when there was none.
        zstack_code: the ZStack code, e.g. ``"SYS.1003"`` (``GATEWAY.*`` for failures the gateway
            described itself), taken from ``error_code`` or else from the ErrorInfo metadata.
        reason: the ``google.rpc.ErrorInfo`` reason, e.g. ``"ZSTACK_SYS_1003"``.
        domain: the ``google.rpc.ErrorInfo`` domain.
        metadata: the ``google.rpc.ErrorInfo`` metadata (empty without an ErrorInfo).
        http_status: the HTTP status of ZStack's answer, when the failure came from one.
        field_violations: ``(field, description)`` pairs from the ``google.rpc.BadRequest`` detail.
    """

    code: grpc.StatusCode
    message: str
    error_code: error_pb2.ErrorCode | None
    zstack_code: str | None
    reason: str | None
    domain: str | None
    metadata: dict[str, str]
    http_status: int | None
    field_violations: list[tuple[str, str]]

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        error_code: error_pb2.ErrorCode | None = None,
        zstack_code: str | None = None,
        reason: str | None = None,
        domain: str | None = None,
        metadata: dict[str, str] | None = None,
        http_status: int | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.error_code = error_code
        if zstack_code is None and error_code is not None and error_code.code:
            zstack_code = error_code.code
        self.zstack_code = zstack_code
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.http_status = http_status
        self.field_violations = list(field_violations or [])

    @property
    def job_uuid(self) -> str | None:
        """The ZStack job the failed call ran (AttachIso, DetachIso), from the ErrorInfo metadata;
        with DEADLINE_EXCEEDED (reason ``ZSTACK_JOB_STILL_RUNNING``) the job goes on inside ZStack."""
        return self.metadata.get("jobUuid")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ZStackError(code={self.code.name}, message={self.message!r}, zstack_code={self.zstack_code!r})"
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> ZStackError:
        """Decode a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

        Never raises: whatever cannot be read (no trailer, a malformed or inconsistent status, a
        detail that does not parse) is left unset.
        """
        code = _status_code(err)
        message = _status_message(err)
        status = _rich_status(err)
        if status is None:
            return cls(code, message)

        error_code: error_pb2.ErrorCode | None = None
        info: error_details_pb2.ErrorInfo | None = None
        violations: list[tuple[str, str]] = []
        for detail in status.details:
            if error_code is None and detail.Is(error_pb2.ErrorCode.DESCRIPTOR):
                error_code = _unpack(detail, error_pb2.ErrorCode())
            elif info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = _unpack(detail, error_details_pb2.ErrorInfo())
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = _unpack(detail, error_details_pb2.BadRequest())
                if bad is not None:
                    violations.extend((v.field, v.description) for v in bad.field_violations)

        metadata = dict(info.metadata) if info is not None else {}
        zstack_code = error_code.code if error_code is not None and error_code.code else None
        return cls(
            code,
            message,
            error_code=error_code,
            zstack_code=zstack_code or metadata.get("zstackCode") or None,
            reason=(info.reason or None) if info is not None else None,
            domain=(info.domain or None) if info is not None else None,
            metadata=metadata,
            http_status=_int_or_none(metadata.get("httpStatus")),
            field_violations=violations,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the error; ``errorCode`` uses ZStack's JSON names."""
        return {
            "code": self.code.name,
            "message": self.message,
            "zstackCode": self.zstack_code,
            "reason": self.reason,
            "domain": self.domain,
            "httpStatus": self.http_status,
            "metadata": dict(self.metadata),
            "fieldViolations": [{"field": f, "description": d} for f, d in self.field_violations],
            "errorCode": None if self.error_code is None else json_format.MessageToDict(self.error_code),
        }


# ---------------------------------------------------------------------------------------------
# Defensive readers: an RpcError raised by grpc always has these methods, but one raised by an
# interceptor or a test double may not, and decoding must not fail on top of the failure.


def _status_code(err: grpc.RpcError) -> grpc.StatusCode:
    try:
        code = err.code()
    except Exception:
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _status_message(err: grpc.RpcError) -> str:
    try:
        message = err.details()
    except Exception:
        return str(err)
    return message if isinstance(message, str) else ""


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    try:
        # Typed for grpc.Call, but it only reads code(), details() and trailing_metadata(), which
        # the sync call objects and grpc.aio.AioRpcError both have.
        status = rpc_status.from_call(cast(grpc.Call, err))
    except Exception:
        # A trailer that does not parse, or whose code or message disagrees with the call's.
        return None
    return status if isinstance(status, status_pb2.Status) else None


def _unpack(detail: any_pb2.Any, message: _M) -> _M | None:
    try:
        return message if detail.Unpack(message) else None
    except Exception:
        return None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
