"""What one call did, collected along the data path for its log line and metrics.

The interceptor's telemetry step opens a :class:`CallRecord` per RPC in a context variable; the
upstream client, the stream writer and the interceptor's status step fill it in (HTTP status, ZStack code,
durations, images, the outcome). Tasks started during the call
(a coalesced upstream request) inherit it, so a shared request is logged once, with the request id
of the call that started it.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
import uuid
from dataclasses import dataclass, field

import grpc

from zstack_gateway.errors import GatewayError
from zstack_gateway.tasks import retrieve
from zstack_gateway.telemetry.metrics import Metrics

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass
class CallRecord:
    method: str
    request_id: str
    traceparent: str | None = None
    metrics: Metrics | None = None
    started: float = field(default_factory=time.monotonic)
    vm_instance_uuid: str | None = None
    upstream_status: int | None = None
    zstack_code: str | None = None
    upstream_seconds: float = 0.0
    upstream_requests: int = 0
    images: int = 0
    coalesced: bool = False
    #: The ZStack job (X-Job-UUID) of an async API's call.
    job_uuid: str | None = None
    #: ZStack accepted the job (or already had it).
    job_accepted: bool = False
    #: The call's initial metadata went out (x-request-id, and the job's uuid for async APIs).
    initial_metadata_sent: bool = False
    #: The initial metadata on its way (see :func:`start_initial_metadata`) until it is out.
    metadata_out: asyncio.Future[None] | None = None
    #: What the caller saw, set where statuses are decided (interceptors.GatewayInterceptor).
    code: grpc.StatusCode = grpc.StatusCode.OK
    failure: GatewayError | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started


current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "zstack_gateway_call", default=None
)


def request_id_from(metadata: object) -> str:
    """The caller's ``x-request-id`` when it is a sane token, else a new one."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


# W3C Trace Context in the form of its version 00: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
)


def traceparent_from(metadata: object) -> str | None:
    """The caller's W3C ``traceparent``, passed on to ZStack only when valid: lowercase hex in the
    55-character form, a version other than the forbidden ``ff``, and a trace id and parent id that
    are not all zeros."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key != "traceparent" or not isinstance(value, str):
            continue
        m = _TRACEPARENT.fullmatch(value)
        if m is None or m["version"] == "ff" or not m["trace"].strip("0") or not m["parent"].strip("0"):
            return None
        return value
    return None


async def send_initial_metadata(context: object, record: CallRecord | None, *extra: tuple[str, str]) -> None:
    """Send the call's initial metadata once: ``x-request-id`` and ``extra``. Raises
    CancelledError when grpc has already ended the call."""
    if record is None or record.initial_metadata_sent:
        return
    record.initial_metadata_sent = True
    try:
        await context.send_initial_metadata((("x-request-id", record.request_id), *extra))  # type: ignore[attr-defined]
    except Exception:  # the call is over already: grpc ended it (deadline, caller gone)
        raise asyncio.CancelledError from None


def start_initial_metadata(context: object, record: CallRecord) -> None:
    """Start sending the call's initial metadata (``x-request-id``) in a task of its own, so that it
    travels while the call makes its upstream request instead of before it.

    Whatever sends the caller something else first (a message, a status) awaits
    :func:`initial_metadata_out` before: grpc adds initial metadata of its own to the first batch
    of a call that has sent none yet, and two in one call is an error.
    """
    if record.initial_metadata_sent:
        return
    record.initial_metadata_sent = True
    sending = asyncio.ensure_future(
        context.send_initial_metadata((("x-request-id", record.request_id),))  # type: ignore[attr-defined]
    )
    sending.add_done_callback(retrieve)
    record.metadata_out = sending


async def initial_metadata_out(record: CallRecord | None) -> None:
    """Return once the initial metadata :func:`start_initial_metadata` started is out (at once when
    none is on its way). Raises CancelledError when grpc has already ended the call."""
    if record is None or record.metadata_out is None:
        return
    try:
        await record.metadata_out
    except Exception:  # the call is over already: grpc ended it (deadline, caller gone)
        raise asyncio.CancelledError from None
    record.metadata_out = None


def current_metrics() -> Metrics | None:
    record = current.get()
    return record.metrics if record is not None else None


def upstream_headers() -> dict[str, str]:
    """Headers that carry the call's identity to ZStack."""
    record = current.get()
    if record is None:
        return {}
    headers = {"X-Request-Id": record.request_id}
    if record.traceparent:
        headers["traceparent"] = record.traceparent
    return headers


def record_upstream(api: str, status: int | None, zstack_code: str | None, seconds: float) -> None:
    record = current.get()
    if record is None:
        return
    record.upstream_status = status
    record.zstack_code = zstack_code or record.zstack_code
    record.upstream_seconds += seconds
    record.upstream_requests += 1
    if record.metrics is not None:
        histogram, counter = record.metrics.upstream_children(api, status, zstack_code)
        histogram.observe(seconds)
        counter.inc()
