"""The gRPC servicer: the data path of GetCandidateIso, one step per module.

caller -> validate (validation, credentials) -> ZStack client (upstream) -> translate -> stream
(chunks). Identical calls in flight together share the upstream request and its translation
(coalesce). Failures are raised as exceptions; the error interceptor turns them into statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import grpc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc

from zstack_gateway import validation
from zstack_gateway.coalesce import Coalescer
from zstack_gateway.credentials import CallerAuth
from zstack_gateway.deadline import Deadline
from zstack_gateway.stream import ImageStream
from zstack_gateway.upstream import ZStackClient


class VmInstanceServicer(svc_grpc.VmInstanceServiceServicer):
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
        context: grpc.aio.ServicerContext[svc.GetCandidateIsoRequest, svc.GetCandidateIsoResponse],
    ) -> AsyncIterator[svc.GetCandidateIsoResponse]:
        query = validation.check_request(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        key = (caller.identity, query)
        images = await self.coalescer.run(key, lambda: self._fetch(query, caller, deadline), deadline)
        for message in images.messages():
            yield message

    async def _fetch(
        self, query: validation.CandidateIsoQuery, caller: CallerAuth, deadline: Deadline
    ) -> ImageStream:
        reply = await self._client.get_iso_candidates(query, caller, deadline)
        return ImageStream(reply.body, reply.size, self._tz)
