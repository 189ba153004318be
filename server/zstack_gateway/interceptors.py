"""The RPC boundary of the zstack.v1 services: interceptors that serve any RPC, unary or streaming.

Three interceptors, in this order (outermost first; :func:`chain` is the one place that sets it):

1. :class:`TelemetryInterceptor` opens the call's :class:`~zstack_gateway.telemetry.calls.CallRecord`,
   sends its request id in the initial metadata, keeps the in-flight count the shutdown drain waits
   on (:class:`Drain`), and when the call is over writes its one log line and its metrics, with the
   outcome the status interceptor recorded.
2. :class:`StatusInterceptor` is the one place where exceptions become statuses: whatever the rest
   of the call raises is classified by :mod:`zstack_gateway.errors` and sent as the rich status
   :mod:`zstack_gateway.status` builds. It also refuses requests that are not valid protobuf
   (INVALID_ARGUMENT) and new calls while the gateway drains (UNAVAILABLE).
3. The caller-token check (:mod:`zstack_gateway.auth.callers`), when caller tokens are configured.

Each is a :class:`CallInterceptor`: it wraps unary-unary and unary-stream handlers alike, around a
``proceed`` that runs the rest of the call, so a new RPC gets status mapping, logs, metrics and the
drain without a line of its own. The handlers they wrap are coroutines (a streaming servicer method
writes its messages itself: see :mod:`zstack_gateway.writer`), so every call runs as one coroutine
in grpc's task for it: its bookkeeping cannot be skipped, nor run in another context.

Statuses: a call that grpc has already ended (the caller's deadline passed, or the caller went away)
gets no second status, since sending one for a call grpc finished makes it fail inside and log a
traceback; and the final status is handed to grpc without waiting for the caller to read it (a
caller that reads nothing cannot hold the call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from zstack_gateway import errors, status
from zstack_gateway.tasks import retrieve
from zstack_gateway.telemetry import calls
from zstack_gateway.telemetry.metrics import Metrics

log = logging.getLogger("zstack_gateway.rpc")

LOG_ERROR_CHARS = 500
#: A caller's reset this close to its deadline is taken for the deadline (see ended_code).
DEADLINE_MARGIN = 0.05
#: The services whose calls the interceptors wrap (health and reflection are left alone).
PREFIX = "/zstack.v1."
#: Methods whose initial metadata waits until ZStack accepted their job, so that it can carry the
#: job's uuid (x-zstack-job-uuid); the servicer sends it then, or the status interceptor before
#: an error status.
DEFERRED_METADATA_METHODS = frozenset(
    {"/zstack.v1.VmInstanceService/AttachIso", "/zstack.v1.VmInstanceService/DetachIso"}
)
#: Wrapped handlers kept per interceptor (one per method; the bound only guards against handlers
#: made anew for each call).
_WRAPPED_LIMIT = 256

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

#: Runs the rest of the call: the next interceptor, then the handler. Returns the unary response
#: (None for a stream, whose messages the handler writes itself).
Proceed: TypeAlias = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Call:
    """What an interceptor knows of one call."""

    method: str
    request: Any
    context: Any  # grpc.aio.ServicerContext


class UndecodableRequest:
    """What the request deserializer gives for bytes that are not the request message."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the unary-unary and unary-stream handlers of the methods under ``prefix``: each call runs
    :meth:`handle` with a ``proceed`` that runs the rest. Subclasses implement :meth:`handle`."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self._prefix = prefix
        # The wrapped handler of each (method, handler): made once, not on every call.
        self._wrapped: dict[tuple[str, Any], Any] = {}

    async def handle(self, call: Call, proceed: Proceed) -> Any:
        raise NotImplementedError

    def request_deserializer(self, deserializer: Callable[[bytes], Any] | None) -> Any:
        """The request deserializer to use instead of ``deserializer`` (the same one by default)."""
        return deserializer

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        key = (method, handler)
        try:
            wrapped = self._wrapped.get(key)
        except TypeError:  # a handler that cannot be a key: wrapped for each call
            return self._wrap_handler(handler, method)
        if wrapped is None:
            wrapped = self._wrap_handler(handler, method)
            if len(self._wrapped) >= _WRAPPED_LIMIT:
                self._wrapped.clear()
            self._wrapped[key] = wrapped
        return wrapped

    def _wrap_handler(self, handler: _Handler, method: str) -> _Handler:
        # grpc's method handlers are namedtuples: replace the behaviour, keep the serializer.
        dynamic: Any = handler
        deserializer = self.request_deserializer(dynamic.request_deserializer)
        if dynamic.unary_stream is not None:
            return dynamic._replace(  # type: ignore[no-any-return]
                unary_stream=self._wrap(dynamic.unary_stream, method), request_deserializer=deserializer
            )
        if dynamic.unary_unary is not None:
            return dynamic._replace(  # type: ignore[no-any-return]
                unary_unary=self._wrap(dynamic.unary_unary, method), request_deserializer=deserializer
            )
        return handler  # streaming requests: zstack.v1 has none

    def _wrap(self, behaviour: Callable[[Any, _Context], Awaitable[Any]], method: str) -> Any:
        async def serve(request: Any, context: _Context) -> Any:
            return await self.handle(Call(method, request, context), lambda: behaviour(request, context))

        return serve


# ---------------------------------------------------------------------------------------------
# Telemetry and the drain


@dataclass
class Drain:
    """The calls in flight, for a shutdown that lets them finish while it refuses new ones."""

    #: Calls of the wrapped services that grpc is not done with (health watches and reflection not
    #: counted).
    in_flight: int = 0
    #: Set at shutdown: new calls are refused with UNAVAILABLE while in-flight ones finish.
    draining: bool = False
    #: Set while no call is in flight and no final status is still on its way to grpc.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _sending: set[asyncio.Future[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.idle.set()

    def opened(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def done(self, _context: object = None) -> None:
        """A call is over for grpc too (its final status went out, or the call was cut off)."""
        self.in_flight -= 1
        self._check()

    def sending(self, task: asyncio.Future[Any]) -> None:
        """A final status on its way: a shutdown that stopped the server now would cut it off."""
        self._sending.add(task)
        self.idle.clear()
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[Any]) -> None:
        self._sending.discard(task)
        self._check()

    def _check(self) -> None:
        if self.in_flight == 0 and not self._sending:
            self.idle.set()


class TelemetryInterceptor(CallInterceptor):
    """The call's record, request id, drain count, log line and metrics."""

    def __init__(self, drain: Drain, metrics: Metrics | None = None, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self._drain = drain
        self._metrics = metrics

    async def handle(self, call: Call, proceed: Proceed) -> Any:
        metadata = call.context.invocation_metadata()
        record = calls.CallRecord(
            method=call.method,
            request_id=calls.request_id_from(metadata),
            traceparent=calls.traceparent_from(metadata),
            metrics=self._metrics,
            vm_instance_uuid=getattr(call.request, "vm_instance_uuid", None) or None,
        )
        token = calls.current.set(record)
        self._drain.opened()
        # The drain counts the call until grpc is done with it, final status sent: a server stopped
        # between the handler's end and that status would cut the status off.
        call.context.add_done_callback(self._drain.done)
        if self._metrics is not None:
            self._metrics.rpcs_in_flight.inc()
        try:
            if call.method not in DEFERRED_METADATA_METHODS:
                await calls.send_initial_metadata(call.context, record)
            return await proceed()
        except asyncio.CancelledError:
            if record.code == grpc.StatusCode.OK:  # ended before the status interceptor saw it
                record.code = ended_code(call.context)
            raise
        finally:
            calls.current.reset(token)
            # Logged and counted before it stops counting as in flight: whoever sees the gateway
            # idle (a drain, a test) sees every call's line and count.
            _finish(record)
            if self._metrics is not None:
                self._metrics.rpcs_in_flight.dec()


def _finish(record: calls.CallRecord) -> None:
    code, failure = record.code, record.failure
    elapsed = record.elapsed()
    metrics = record.metrics
    if metrics is not None:
        count, seconds = metrics.rpc_children(record.method, code.name)
        count.inc()
        seconds.observe(elapsed)
        metrics.images.inc(record.images)
        if record.coalesced:
            metrics.coalesced.inc()
    zstack_code = failure.zstack_code if failure is not None else record.zstack_code
    # ERROR is kept for the gateway's own faults (logged with their traceback); a failed call is the
    # caller's or ZStack's business, so it is a WARNING.
    level = logging.INFO if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else logging.WARNING
    log.log(
        level,
        "%s %s",
        record.method,
        code.name,
        extra={
            "rpc": record.method,
            "request_id": record.request_id,
            "vm": (record.vm_instance_uuid or "")[:64] or None,
            "outcome": "ok" if code == grpc.StatusCode.OK else "error",
            "grpc_code": code.name,
            "zstack_code": zstack_code or None,
            "upstream_status": failure.http_status if failure is not None else record.upstream_status,
            "duration_ms": round(elapsed * 1000, 2),
            "upstream_ms": round(record.upstream_seconds * 1000, 2),
            "upstream_requests": record.upstream_requests,
            "coalesced": record.coalesced,
            "images": record.images,
            "zstack_job": record.job_uuid,
            # Cut: a verbose (or hostile) ZStack error must not make huge log lines.
            "error": failure.message[:LOG_ERROR_CHARS] if failure is not None else None,
        },
    )


# ---------------------------------------------------------------------------------------------
# Exceptions -> statuses


class StatusInterceptor(CallInterceptor):
    """The one place where exceptions become statuses; the outcome goes on the call's record."""

    def __init__(self, drain: Drain, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self._drain = drain

    def request_deserializer(self, deserializer: Callable[[bytes], Any] | None) -> Any:
        """Hands a decoding failure to :meth:`handle` (INVALID_ARGUMENT) instead of raising it inside
        grpc, which would answer UNKNOWN with the exception's text and log a traceback."""

        def deserialize(raw: bytes) -> Any:
            if deserializer is None:
                return raw
            try:
                return deserializer(raw)
            except Exception as exc:  # DecodeError, and whatever a broken input makes the parser raise
                return UndecodableRequest(f"{type(exc).__name__}: {str(exc)[:200]}")

        return deserialize

    async def handle(self, call: Call, proceed: Proceed) -> Any:
        record = calls.current.get()
        try:
            if self._drain.draining:
                raise errors.shutting_down()
            if isinstance(call.request, UndecodableRequest):
                raise errors.invalid_argument(
                    [("request", f"the request is not a valid {call.method} message: {call.request.problem}")]
                )
            return await proceed()
        except asyncio.CancelledError:
            _record(record, ended_code(call.context), None)
            raise
        except Exception as exc:
            failure = errors.from_exception(exc)
            if not isinstance(exc, errors.GatewayError):
                extra = {"request_id": record.request_id} if record is not None else {}
                log.error("unexpected error in %s", call.method, exc_info=exc, extra=extra)
            ended = already_ended(call.context)
            if ended is not None:
                # grpc ended the call on its own (the caller's deadline passed): it has sent, or is
                # sending, the status; a second one would fail inside grpc. Leave quietly.
                _record(record, ended, None)
                raise asyncio.CancelledError from None
            _record(record, failure.code, failure)
            if record is not None and not record.initial_metadata_sent:
                job = (
                    (("x-zstack-job-uuid", record.job_uuid),)
                    if record.job_uuid and record.job_accepted
                    else ()
                )
                await calls.send_initial_metadata(call.context, record, *job)
            await self._send(call.context, status.to_grpc_status(failure))

    async def _send(self, context: _Context, sent: grpc.Status) -> NoReturn:
        """Hand the call's final status to grpc, then leave without waiting for the caller to take it.

        grpc's ``abort`` waits until the status is on its way, which is never for a caller that
        reads nothing (the status queues behind the messages it has not read). The abort runs in a
        task of its own; its first step hands the status to grpc core before this call goes on, and
        whatever it ends with later is of no further use. The handler then leaves as grpc expects of
        a call whose status is already sent. The drain waits for the status to be out.
        """
        sending = asyncio.ensure_future(context.abort_with_status(sent))
        sending.add_done_callback(retrieve)
        self._drain.sending(sending)
        await asyncio.sleep(0)  # one loop turn: the task's first step runs and starts grpc's batch
        raise asyncio.CancelledError


def _record(
    record: calls.CallRecord | None, code: grpc.StatusCode, failure: errors.GatewayError | None
) -> None:
    if record is not None:
        record.code, record.failure = code, failure


def already_ended(context: _Context) -> grpc.StatusCode | None:
    """The outcome grpc gave a call it has already ended by itself, else None."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if context.done():
        return grpc.StatusCode.CANCELLED
    return None


def ended_code(context: _Context) -> grpc.StatusCode:
    """What the caller saw of a call whose task grpc cancelled: its deadline, or its own cancel.

    The caller's grpc ends a call at its deadline by resetting the stream, a little before the
    gateway's copy of that deadline passes (the copy starts when the request arrives): a reset that
    comes within :data:`DEADLINE_MARGIN` of the deadline is the caller running out of time. Measured
    here, such resets arrive under 10 ms before the gateway's copy passes, under CPU contention too.
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_MARGIN:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def chain(drain: Drain, metrics: Metrics | None, *inner: grpc.aio.ServerInterceptor) -> list[Any]:
    """The server's interceptors in their one order: telemetry outermost (it sees every call,
    refusals included), then status mapping (it turns what the rest raises into statuses), then
    ``inner`` (the caller-token check), whose refusals it maps."""
    return [TelemetryInterceptor(drain, metrics), StatusInterceptor(drain), *inner]
