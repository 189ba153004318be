"""The RPC boundary of the zstack.v1 services: the one place where exceptions become statuses,
and where each call gets its request id, its metrics and its log line.

Handlers raise; this interceptor catches what they raise and aborts the call with the rich status
that :mod:`zstack_gateway.errors` builds. An exception nobody expected is logged with its traceback
and reaches the caller as a plain INTERNAL: its text may hold internals.

The interceptor runs every wrapped call itself, as one coroutine in grpc's task for that call:

* it drives the handler's stream and writes each message (``context.write``), so it sees a caller
  that stops reading: a write that makes no progress for ``stream_idle_timeout`` seconds ends the
  call with RESOURCE_EXHAUSTED ``STREAM_IDLE_TIMEOUT`` and frees what the call held;
* every call, however it ends (finished, failed, cancelled by the caller, out of time, refused as
  undecodable), gets exactly one log line, one ``rpcs_total`` count with the outcome the caller saw,
  and leaves the in-flight gauge as it found it; all of it happens in that one task, so the call's
  context (its :class:`~zstack_gateway.calls.CallRecord`) is set and reset in the same place;
* a call that grpc has already ended (the caller's deadline passed, or the caller went away) gets no
  second status: sending one for a call grpc finished makes grpc fail inside and log a traceback;
* a request that is not valid protobuf reaches no handler: it is refused with INVALID_ARGUMENT
  (the wrapped request deserializer hands over the decoding error instead of raising it inside
  grpc, which would answer UNKNOWN with the exception's text).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from zstack_gateway import errors, status
from zstack_gateway.telemetry import calls
from zstack_gateway.telemetry.metrics import Metrics

log = logging.getLogger("zstack_gateway.rpc")

LOG_ERROR_CHARS = 500
#: A caller's reset this close to its deadline is taken for the deadline (see _ended_code).
DEADLINE_MARGIN = 0.05

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class UndecodableRequest:
    """What the wrapped request deserializer returns for bytes that are not the request message."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def tolerant_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserializer``, returning an :class:`UndecodableRequest` instead of raising."""

    def deserialize(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, and whatever a broken input makes the parser raise
            return UndecodableRequest(f"{type(exc).__name__}: {str(exc)[:200]}")

    return deserialize


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of every method under ``prefix`` (default: the zstack.v1 package)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        prefix: str = "/zstack.v1.",
        *,
        stream_idle_timeout: float = 0.0,
    ) -> None:
        self._prefix = prefix
        self._metrics = metrics
        self._idle_timeout = stream_idle_timeout
        #: Calls of the wrapped services in progress (health watches and reflection not counted).
        self.in_flight = 0
        #: Set while no wrapped call is in flight and no final status is still on its way.
        self.idle = asyncio.Event()
        self.idle.set()
        self._sending: set[asyncio.Future[Any]] = set()
        #: Set at shutdown: new calls are refused with UNAVAILABLE while in-flight ones finish.
        self.draining = False

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        # grpc's method handlers are namedtuples: replace the behaviour, keep the serializer.
        dynamic: Any = handler
        deserializer = tolerant_deserializer(dynamic.request_deserializer)
        if dynamic.unary_stream is not None:
            return dynamic._replace(  # type: ignore[no-any-return]
                unary_stream=self._wrap_stream(dynamic.unary_stream, method),
                request_deserializer=deserializer,
            )
        if dynamic.unary_unary is not None:
            return dynamic._replace(  # type: ignore[no-any-return]
                unary_unary=self._wrap_unary(dynamic.unary_unary, method),
                request_deserializer=deserializer,
            )
        return handler

    def _wrap_stream(self, behaviour: Any, method: str) -> Callable[[Any, _Context], Awaitable[None]]:
        async def serve_stream(request: Any, context: _Context) -> None:
            async def body(record: calls.CallRecord) -> None:
                stream = behaviour(request, context)
                try:
                    async for message in stream:
                        images = getattr(message, "images", None)
                        record.images += (
                            images if images is not None else len(getattr(message, "inventories", ()))
                        )
                        await self._write(context, message)
                finally:
                    await stream.aclose()

            await self._serve(method, request, context, body)

        return serve_stream

    def _wrap_unary(self, behaviour: Any, method: str) -> Callable[[Any, _Context], Awaitable[Any]]:
        async def serve_unary(request: Any, context: _Context) -> Any:
            result: list[Any] = []

            async def body(record: calls.CallRecord) -> None:
                result.append(await behaviour(request, context))

            await self._serve(method, request, context, body)
            return result[0]

        return serve_unary

    async def _serve(
        self,
        method: str,
        request: Any,
        context: _Context,
        body: Callable[[calls.CallRecord], Awaitable[None]],
    ) -> None:
        metadata = context.invocation_metadata()
        record = calls.CallRecord(
            method=method,
            request_id=calls.request_id_from(metadata),
            traceparent=calls.traceparent_from(metadata),
            metrics=self._metrics,
            vm_instance_uuid=getattr(request, "vm_instance_uuid", None) or None,
        )
        token = calls.current.set(record)
        self._opened()
        code = grpc.StatusCode.OK
        failure: errors.GatewayError | None = None
        try:
            if self.draining:
                raise errors.shutting_down()
            if isinstance(request, UndecodableRequest):
                raise errors.invalid_argument(
                    [("request", f"the request is not a valid {method} request message: {request.problem}")]
                )
            await context.send_initial_metadata((("x-request-id", record.request_id),))
            await body(record)
        except asyncio.CancelledError:
            code = _ended_code(context)
            raise
        except Exception as exc:
            failure = errors.from_exception(exc)
            code = failure.code
            if not isinstance(exc, errors.GatewayError):
                log.error(
                    "unexpected error in %s", method, exc_info=exc, extra={"request_id": record.request_id}
                )
            ended = _already_ended(context)
            if ended is not None:
                # grpc ended the call on its own (the caller's deadline passed): it has sent, or is
                # sending, the status; a second one would fail inside grpc. Leave quietly.
                code = ended
                raise asyncio.CancelledError from None
            await self._send_status(context, status.to_grpc_status(failure))
        finally:
            calls.current.reset(token)
            # Logged and counted before it stops counting as in flight: whoever sees the gateway idle
            # (a drain, a test) sees every call's line and count.
            _finish(record, code, failure)
            self._closed()

    async def _write(self, context: _Context, message: Any) -> None:
        """Write one message; a caller that reads nothing for the idle timeout ends the call.

        A write fails only when the call is over (the caller went away, or the server stops): the
        call then leaves as a cancelled one, with no status of its own (grpc has ended it)."""
        try:
            if self._idle_timeout <= 0:
                await context.write(message)
                return
            write = asyncio.ensure_future(context.write(message))
            # When this call leaves before the write ends (cancelled, or idle), the write stays
            # pending inside grpc and fails once the call is over: its outcome no longer matters.
            write.add_done_callback(_retrieve)
            done, _ = await asyncio.wait((write,), timeout=self._idle_timeout)
            if not done:
                raise errors.stream_idle(self._idle_timeout)
            write.result()
        except (errors.GatewayError, asyncio.CancelledError):
            raise
        except Exception:  # grpc's ExecuteBatchError, UsageError ("RPC already finished"), ...
            raise asyncio.CancelledError from None

    async def _send_status(self, context: _Context, status: grpc.Status) -> NoReturn:
        """Hand the call's final status to grpc, then leave without waiting for the caller to take it.

        grpc's ``abort`` waits until the status is on its way, which is never for a caller that
        reads nothing (the status queues behind the messages it has not read). The abort runs in a
        task of its own; its first step hands the status to grpc core before this call goes on, and
        whatever it ends with later is of no further use. The handler then leaves as grpc expects of
        a call whose status is already sent. Until the status is out, the gateway does not count as
        idle: a shutdown that stopped the server earlier would cut the status off (CANCELLED).
        """
        sending = asyncio.ensure_future(context.abort_with_status(status))
        self._sending.add(sending)
        self.idle.clear()
        sending.add_done_callback(self._sent)
        await asyncio.sleep(0)  # one loop turn: the task's first step runs and starts grpc's batch
        raise asyncio.CancelledError

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        _retrieve(sending)
        self._sending.discard(sending)
        self._check_idle()

    def _opened(self) -> None:
        self.in_flight += 1
        self.idle.clear()
        if self._metrics is not None:
            self._metrics.rpcs_in_flight.inc()

    def _closed(self) -> None:
        self.in_flight -= 1
        self._check_idle()
        if self._metrics is not None:
            self._metrics.rpcs_in_flight.dec()

    def _check_idle(self) -> None:
        if self.in_flight == 0 and not self._sending:
            self.idle.set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _already_ended(context: _Context) -> grpc.StatusCode | None:
    """The outcome grpc gave a call it has already ended by itself, else None."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if context.done():
        return grpc.StatusCode.CANCELLED
    return None


def _ended_code(context: _Context) -> grpc.StatusCode:
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


def _finish(record: calls.CallRecord, code: grpc.StatusCode, failure: errors.GatewayError | None) -> None:
    elapsed = record.elapsed()
    metrics = record.metrics
    if metrics is not None:
        method = record.method.rsplit("/", 1)[-1]
        metrics.rpcs.labels(method, code.name).inc()
        metrics.rpc_seconds.labels(method).observe(elapsed)
        metrics.images.inc(record.images)
        if record.coalesced:
            metrics.coalesced.inc()
    zstack_code = failure.zstack_code if failure is not None else record.zstack_code
    # ERROR is kept for the gateway's own faults (logged above with their traceback); a failed call
    # is the caller's or ZStack's business, so it is a WARNING.
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
            # Cut: a verbose (or hostile) ZStack error must not make huge log lines.
            "error": failure.message[:LOG_ERROR_CHARS] if failure is not None else None,
        },
    )
