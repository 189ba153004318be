"""The RPC boundary of the zstack.v1 services: one interceptor that serves any RPC, unary or streaming.

:class:`GatewayInterceptor` runs every call of the wrapped services as one coroutine in grpc's task
for it, in three steps (outermost first):

1. **Telemetry**: it opens the call's :class:`~zstack_gateway.telemetry.calls.CallRecord`, sends
   its request id in the initial metadata (on its way while the upstream request is made: see
   :func:`~zstack_gateway.telemetry.calls.start_initial_metadata`), keeps the in-flight count the
   shutdown drain waits on (:class:`Drain`), and when the call is over writes its one log line and
   its metrics, with the outcome step 2 recorded.
2. **Statuses**: the one place where exceptions become statuses. Whatever the rest of the call
   raises is classified by :mod:`zstack_gateway.errors` and sent as the rich status
   :mod:`zstack_gateway.status` builds. It also refuses requests that are not valid protobuf
   (INVALID_ARGUMENT) and new calls while the gateway drains (UNAVAILABLE).
3. **Caller checks** (:mod:`zstack_gateway.auth.callers`: the caller token, when configured), whose
   refusals step 2 maps like any other failure.

The steps are one coroutine, not a chain of interceptors, so a call pays for one wrapper, one
context-variable switch and one handler look-up, however many steps there are. A new RPC gets
status mapping, logs, metrics and the drain without a line of its own. The handlers it wraps are
coroutines (a streaming servicer method writes its messages itself: see :mod:`zstack_gateway.writer`),
so a call's bookkeeping cannot be skipped, nor run in another context.

Statuses: a call that grpc has already ended (the caller's deadline passed, or the caller went away)
gets no second status, since sending one for a call grpc finished makes it fail inside and log a
traceback; and the final status is handed to grpc without waiting for the caller to read it (a
caller that reads nothing cannot hold the call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
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

#: A caller check: None when the call's invocation metadata may proceed, else the error that
#: refuses it (see :mod:`zstack_gateway.auth.callers`).
CallerCheck: TypeAlias = Callable[[Any], "errors.GatewayError | None"]


class UndecodableRequest:
    """What the request deserializer gives for bytes that are not the request message."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserializer``, handing a decoding failure to the call (INVALID_ARGUMENT) instead of raising
    it inside grpc, which would answer UNKNOWN with the exception's text and log a traceback."""

    def deserialize(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, and whatever a broken input makes the parser raise
            return UndecodableRequest(f"{type(exc).__name__}: {str(exc)[:200]}")

    return deserialize


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


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the unary-unary and unary-stream handlers of the methods under ``prefix``: telemetry,
    statuses and ``checks`` (caller checks, in order) around each call (see the module's text)."""

    def __init__(
        self,
        drain: Drain,
        metrics: Metrics | None = None,
        checks: Sequence[CallerCheck] = (),
        prefix: str = PREFIX,
    ) -> None:
        self._drain = drain
        self._metrics = metrics
        self._checks = tuple(checks)
        self._prefix = prefix
        # The wrapped handler of each (method, handler): made once, not on every call.
        self._wrapped: dict[tuple[str, Any], Any] = {}
        #: Calls between their start and their log line (the ``rpcs_in_flight`` gauge reads it
        #: when scraped: nothing to update per call).
        self.serving = 0
        if metrics is not None:
            metrics.rpcs_in_flight.set_function(lambda: self.serving)

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
        deserializer = _tolerant(dynamic.request_deserializer)
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
        deferred_metadata = method in DEFERRED_METADATA_METHODS
        drain, metrics, checks = self._drain, self._metrics, self._checks

        async def serve(request: Any, context: Any) -> Any:  # context: grpc.aio.ServicerContext
            # 1. Telemetry: the call's record, its request id, the drain's count.
            metadata = context.invocation_metadata()
            record = calls.CallRecord(
                method=method,
                request_id=calls.request_id_from(metadata),
                traceparent=calls.traceparent_from(metadata),
                metrics=metrics,
                vm_instance_uuid=getattr(request, "vm_instance_uuid", None) or None,
            )
            token = calls.current.set(record)
            drain.opened()
            # The drain counts the call until grpc is done with it, final status sent: a server
            # stopped between the handler's end and that status would cut the status off.
            context.add_done_callback(drain.done)
            self.serving += 1
            try:
                if not deferred_metadata:
                    calls.start_initial_metadata(context, record)
                # 2. Statuses, around 3. the caller checks and the handler.
                try:
                    if drain.draining:
                        raise errors.shutting_down()
                    if isinstance(request, UndecodableRequest):
                        raise errors.invalid_argument(
                            [("request", f"the request is not a valid {method} message: {request.problem}")]
                        )
                    for check in checks:
                        problem = check(metadata)
                        if problem is not None:
                            raise problem
                    result = await behaviour(request, context)
                    await calls.initial_metadata_out(record)  # before grpc sends the status
                    return result
                except asyncio.CancelledError:
                    record.code = ended_code(context)
                    raise
                except Exception as exc:
                    await self._fail(record, context, exc)
            except asyncio.CancelledError:
                if record.code == grpc.StatusCode.OK:  # ended before a status was decided
                    record.code = ended_code(context)
                raise
            finally:
                calls.current.reset(token)
                # Logged and counted before it stops counting as in flight: whoever sees the
                # gateway idle (a drain, a test) sees every call's line and count.
                _finish(record)
                self.serving -= 1

        return serve

    async def _fail(self, record: calls.CallRecord, context: _Context, exc: Exception) -> NoReturn:
        """The one place where an exception becomes the call's status."""
        failure = errors.from_exception(exc)
        if not isinstance(exc, errors.GatewayError):
            extra = {"request_id": record.request_id}
            log.error("unexpected error in %s", record.method, exc_info=exc, extra=extra)
        try:
            await calls.initial_metadata_out(record)
        except asyncio.CancelledError:  # the call ended before its initial metadata got out
            record.code, record.failure = ended_code(context), None
            raise
        ended = already_ended(context)
        if ended is not None:
            # grpc ended the call on its own (the caller's deadline passed): it has sent, or is
            # sending, the status; a second one would fail inside grpc. Leave quietly.
            record.code, record.failure = ended, None
            raise asyncio.CancelledError from None
        record.code, record.failure = failure.code, failure
        if not record.initial_metadata_sent:
            job = (("x-zstack-job-uuid", record.job_uuid),) if record.job_uuid and record.job_accepted else ()
            await calls.send_initial_metadata(context, record, *job)
        await self._send(context, status.to_grpc_status(failure))

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


def chain(drain: Drain, metrics: Metrics | None, *checks: CallerCheck) -> list[Any]:
    """The server's interceptors: the one :class:`GatewayInterceptor`, with ``checks`` (the caller
    checks of :func:`zstack_gateway.auth.callers.checks`) as its third step."""
    return [GatewayInterceptor(drain, metrics, checks)]
