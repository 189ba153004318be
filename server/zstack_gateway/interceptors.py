"""The RPC boundary of the zstack.v1 services: the one place where exceptions become statuses,
and where each call gets its request id, its metrics and its log line.

Handlers raise; this interceptor catches what they raise and aborts the call with the rich status
that :mod:`zstack_gateway.errors` builds. An exception nobody expected is logged with its traceback
and reaches the caller as a plain INTERNAL: its text may hold internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from zstack_gateway import errors, observe
from zstack_gateway.metrics import Metrics
from zstack_gateway.translate import TranslationError

log = logging.getLogger("zstack_gateway.rpc")

LOG_ERROR_CHARS = 500

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of every method under ``prefix`` (default: the zstack.v1 package)."""

    def __init__(self, metrics: Metrics | None = None, prefix: str = "/zstack.v1.") -> None:
        self._prefix = prefix
        self._metrics = metrics
        #: Calls of the wrapped services in progress (health watches and reflection not counted).
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        #: Set at shutdown: new calls are refused with UNAVAILABLE while in-flight ones finish.
        self.draining = False

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        # grpc's method handlers are namedtuples: replace the behaviour, keep the (de)serializers.
        dynamic: Any = handler
        if dynamic.unary_stream is not None:
            return dynamic._replace(unary_stream=self._wrap_stream(dynamic.unary_stream, method))  # type: ignore[no-any-return]
        return handler

    def _wrap_stream(self, behaviour: Any, method: str) -> Callable[..., AsyncIterator[Any]]:
        metrics = self._metrics

        async def wrapped(request: Any, context: _Context) -> AsyncIterator[Any]:
            metadata = context.invocation_metadata()
            record = observe.CallRecord(
                method=method,
                request_id=observe.request_id_from(metadata),
                traceparent=observe.traceparent_from(metadata),
                metrics=metrics,
                vm_instance_uuid=getattr(request, "vm_instance_uuid", None) or None,
            )
            token = observe.current.set(record)
            self.in_flight += 1
            self.idle.clear()
            if metrics is not None:
                metrics.rpcs_in_flight.inc()
            code = grpc.StatusCode.OK
            failure: errors.GatewayError | None = None
            try:
                if self.draining:
                    raise errors.shutting_down()
                await context.send_initial_metadata((("x-request-id", record.request_id),))
                async for message in behaviour(request, context):
                    images = getattr(message, "images", None)
                    record.images += (
                        images if isinstance(images, int) else len(getattr(message, "inventories", ()))
                    )
                    yield message
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                failure = errors.from_exception(exc)
                code = failure.code
                if not isinstance(exc, errors.GatewayError | TranslationError):
                    log.error(
                        "unexpected error in %s",
                        method,
                        exc_info=exc,
                        extra={"request_id": record.request_id},
                    )
                await context.abort_with_status(errors.to_grpc_status(failure))
            finally:
                observe.current.reset(token)
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.idle.set()
                _finish(record, code, failure)

        return wrapped


def _finish(record: observe.CallRecord, code: grpc.StatusCode, failure: errors.GatewayError | None) -> None:
    elapsed = record.elapsed()
    metrics = record.metrics
    if metrics is not None:
        method = record.method.rsplit("/", 1)[-1]
        metrics.rpcs_in_flight.dec()
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
