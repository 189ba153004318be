"""The gRPC servicer: the data path of GetCandidateIso, one step per module.

caller -> validate (validation, credentials) -> ZStack client (upstream) -> translate -> stream
(chunks). Identical calls in flight together share the upstream request and its translation
(coalesce). Failures are raised as exceptions; the error interceptor turns them into statuses.

The stream's messages leave already serialized (:class:`stream.Chunk`): :func:`add_to_server`
registers the service with a response serializer that passes them through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from zstack.v1 import vm_instance_service_pb2 as svc

from zstack_gateway import validation, writer
from zstack_gateway.auth import CallerAuth
from zstack_gateway.coalesce import Coalescer
from zstack_gateway.deadline import Deadline
from zstack_gateway.stream import Chunk, ImageStream, open_stream
from zstack_gateway.upstream import ZStackClient

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["VmInstanceService"].full_name


class VmInstanceServicer:
    def __init__(
        self,
        client: ZStackClient,
        *,
        tz: ZoneInfo,
        default_timeout: float,
        coalescer: Coalescer[ImageStream] | None = None,
    ) -> None:
        self._client = client
        self._tz = tz
        self._default_timeout = default_timeout
        self.coalescer: Coalescer[ImageStream] = coalescer if coalescer is not None else Coalescer()

    async def GetCandidateIso(
        self,
        request: svc.GetCandidateIsoRequest,
        context: grpc.aio.ServicerContext[svc.GetCandidateIsoRequest, Chunk],
    ) -> AsyncIterator[Chunk]:
        query = validation.check_request(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        key = (caller.identity, query)
        images = await self.coalescer.run(key, lambda: self._fetch(query, caller, deadline), deadline)
        reader = images.reader()  # at once: see ImageStream's shared_by
        del images
        try:
            for chunk in reader:
                yield chunk
        finally:
            reader.close()

    async def _fetch(
        self, query: validation.CandidateIsoQuery, caller: CallerAuth, deadline: Deadline
    ) -> ImageStream:
        reply = await self._client.get_iso_candidates(query, caller, deadline)
        # Coalesced calls join through the task running this fetch, as long as it exists.
        shared_by = asyncio.current_task() if self.coalescer.enabled else None
        return await open_stream(reply.body, self._tz, reply.account, shared_by=shared_by)


def serialize_response(message: Chunk | svc.GetCandidateIsoResponse) -> bytes:
    """A Chunk is already a serialized GetCandidateIsoResponse; a message is serialized as usual."""
    if isinstance(message, Chunk):
        return message.data
    return message.SerializeToString()


def add_to_server(servicer: VmInstanceServicer, server: grpc.aio.Server, *, idle_timeout: float) -> None:
    """Register the service on ``server`` (instead of the generated add_..._to_server). Streaming
    methods are served through :mod:`zstack_gateway.writer` (``idle_timeout``: see there)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetCandidateIso": grpc.unary_stream_rpc_method_handler(
            writer.streaming(servicer.GetCandidateIso, idle_timeout),
            request_deserializer=svc.GetCandidateIsoRequest.FromString,
            response_serializer=serialize_response,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
