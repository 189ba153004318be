"""The gRPC servicer: the data path of GetCandidateIso, one step per module.

caller -> validate (validation) -> ZStack client (upstream) -> translate -> stream (chunks).
Failures are raised as exceptions; the error interceptor turns them into statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import grpc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc

from zstack_gateway import translate, validation
from zstack_gateway.deadline import Deadline
from zstack_gateway.stream import chunks
from zstack_gateway.upstream import ZStackClient


class VmInstanceServicer(svc_grpc.VmInstanceServiceServicer):
    def __init__(self, client: ZStackClient, *, tz: ZoneInfo, default_timeout: float) -> None:
        self._client = client
        self._tz = tz
        self._default_timeout = default_timeout

    async def GetCandidateIso(
        self,
        request: svc.GetCandidateIsoRequest,
        context: grpc.aio.ServicerContext[svc.GetCandidateIsoRequest, svc.GetCandidateIsoResponse],
    ) -> AsyncIterator[svc.GetCandidateIsoResponse]:
        query = validation.check_request(request)
        authorization = validation.session_authorization(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        body = await self._client.get_iso_candidates(query, authorization, deadline)
        images = translate.inventories_from_body(body, self._tz)
        for message in chunks(images):
            yield message
