"""GatewayError -> gRPC status: the wire encoding of the gateway's errors.

A status carries the error's message, cut so that grpc-message stays under
:data:`MAX_MESSAGE_WIRE_BYTES` as sent; the ZStack ``ErrorCode`` as a ``zstack.v1.ErrorCode`` detail;
exactly one ``google.rpc.ErrorInfo`` (domain :data:`~zstack_gateway.errors.DOMAIN`); a
``google.rpc.RetryInfo`` when trying again later may work; and a ``google.rpc.BadRequest`` for invalid
requests. The serialized details stay under :data:`MAX_DETAILS_BYTES`, so the trailers fit gRPC's
default 8 KiB metadata limit whatever ZStack sent: the ErrorCode's cause chain and strings are cut
(and say so) until they fit. What a status costs to build does not grow with what the error holds.
"""

from __future__ import annotations

import base64
import datetime

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from zstack.v1 import error_pb2

from zstack_gateway.error_json import CUT_MARK
from zstack_gateway.errors import DOMAIN, MAX_CODE_BYTES, GatewayError, cut

# Limits that keep the status trailers under gRPC's 8 KiB soft metadata limit whatever ZStack sends:
# the serialized google.rpc.Status stays under 4,500 bytes (6,000 once base64-encoded for
# grpc-status-details-bin), and grpc-message under 1,000 bytes as sent. grpc percent-encodes the
# message, so a non-ASCII character costs 3 bytes per UTF-8 byte: a Chinese one costs 9.
MAX_DETAILS_BYTES = 4500
MAX_MESSAGE_WIRE_BYTES = 1000
MAX_CAUSE_DEPTH = 8
MAX_FIELD_CHARS = 1024


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
            setattr(dst, name, cut(getattr(src, name), max_chars))
    if src.HasField("opaque"):
        if src.opaque.ByteSize() > max_chars:
            dst.details = cut(dst.details, max_chars) + " [opaque dropped by the gateway: too large]"
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
    for key, value in list(err.info_metadata.items())[:8]:
        info.metadata[_cut_bytes(key, 64)] = _cut_bytes(value, MAX_CODE_BYTES)
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
                error_details_pb2.BadRequest.FieldViolation(field=f, description=cut(d, 300))
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
