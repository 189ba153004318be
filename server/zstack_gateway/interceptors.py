"""The one place where exceptions become gRPC statuses.

Handlers of the zstack.v1 services raise; this interceptor catches what they raise and aborts the
call with the rich status that :mod:`zstack_gateway.errors` builds. An exception nobody expected is
logged with its traceback and reaches the caller as a plain INTERNAL: its text may hold internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from zstack_gateway import errors
from zstack_gateway.translate import TranslationError

log = logging.getLogger("zstack_gateway.rpc")

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of every method under ``prefix`` (default: the zstack.v1 package)."""

    def __init__(self, prefix: str = "/zstack.v1.") -> None:
        self._prefix = prefix

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
            return dynamic._replace(unary_stream=_wrap_stream(dynamic.unary_stream, method))  # type: ignore[no-any-return]
        if dynamic.unary_unary is not None:
            return dynamic._replace(unary_unary=_wrap_unary(dynamic.unary_unary, method))  # type: ignore[no-any-return]
        return handler


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    """Abort the call with the status for ``exc`` (never returns normally)."""
    err = errors.from_exception(exc)
    if not isinstance(exc, errors.GatewayError | TranslationError):
        log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort_with_status(errors.to_grpc_status(err))


def _wrap_stream(behaviour: Any, method: str) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for message in behaviour(request, context):
                yield message
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort(context, exc, method)

    return wrapped


def _wrap_unary(behaviour: Any, method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort(context, exc, method)

    return wrapped
