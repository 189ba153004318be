"""The gRPC servicers: the data path of each RPC, one step per module.

GetCandidateIso and GetCandidateVm: caller -> validate (validation, credentials) -> ZStack client
(upstream) -> translate -> stream (chunks). Identical GetCandidateIso calls in flight together share
the upstream request and its translation (coalesce).

AttachIso and DetachIso: caller -> validate -> a ZStack job, submitted once and polled to its end
(jobs) -> translate_vm -> one response. Mutations are never coalesced.

Failures are raised as exceptions; the interceptor's status step turns them into statuses.

The stream's messages leave already serialized (:class:`stream.Chunk`): :func:`add_to_server`
registers the service with a response serializer that passes them through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import orjson
from zstack.v1 import image_service_pb2 as image_svc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_pb2

from zstack_gateway import coalesce, errors, jobs, translate_vm, validation, wire, writer
from zstack_gateway.auth import CallerAuth
from zstack_gateway.coalesce import Coalescer
from zstack_gateway.deadline import Deadline
from zstack_gateway.stream import Arrival, Chunk, ImageStream, open_stream
from zstack_gateway.telemetry import calls
from zstack_gateway.upstream import Reply, ZStackClient

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["VmInstanceService"].full_name
IMAGE_SERVICE_NAME = image_svc.DESCRIPTOR.services_by_name["ImageService"].full_name


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

    @property
    def client(self) -> ZStackClient:
        return self._client

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    @property
    def default_timeout(self) -> float:
        return self._default_timeout

    async def GetCandidateIso(
        self,
        request: svc.GetCandidateIsoRequest,
        context: grpc.aio.ServicerContext[svc.GetCandidateIsoRequest, Chunk],
    ) -> AsyncIterator[Chunk]:
        query = validation.check_request(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        key = (caller.identity, query)
        images, release = await self.coalescer.share(
            key, lambda: self._fetch(query, caller, deadline), deadline
        )
        try:
            # While the answer arrives, its read runs until the latest deadline of the callers
            # holding it; each caller's own deadline ends its own call.
            images.hold_for(deadline)
            reader = images.reader(deadline)  # at once: see ImageStream's shared_by
            del images
            try:
                async for chunk in reader:
                    yield chunk
            finally:
                reader.close()
        finally:
            await release()

    async def AttachIso(
        self,
        request: svc.AttachIsoRequest,
        context: grpc.aio.ServicerContext[svc.AttachIsoRequest, svc.AttachIsoResponse],
    ) -> svc.AttachIsoResponse:
        query = validation.check_attach(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        key = "\x00".join(
            (
                query.vm_instance_uuid,
                query.iso_uuid,
                "\x01".join(query.system_tags),
                "\x01".join(query.user_tags),
            )
        )
        mutation = jobs.Mutation(
            "AttachIso",
            "POST",
            self._client.attach_iso_path(query),
            [],
            orjson.dumps(query.body()),
            key,
            query.request_id,
        )
        reply = await jobs.run(self._client, mutation, caller, deadline, _accepted(context))
        return svc.AttachIsoResponse(inventory=self._inventory(reply))

    async def DetachIso(
        self,
        request: svc.DetachIsoRequest,
        context: grpc.aio.ServicerContext[svc.DetachIsoRequest, svc.DetachIsoResponse],
    ) -> svc.DetachIsoResponse:
        query = validation.check_detach(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        key = "\x00".join(
            (
                query.vm_instance_uuid,
                query.iso_uuid if query.iso_uuid is not None else "\x02",
                "\x01".join(query.system_tags),
                "\x01".join(query.user_tags),
            )
        )
        mutation = jobs.Mutation(
            "DetachIso",
            "DELETE",
            self._client.detach_iso_path(query),
            query.query_pairs(),
            None,
            key,
            query.request_id,
        )
        reply = await jobs.run(self._client, mutation, caller, deadline, _accepted(context))
        return svc.DetachIsoResponse(inventory=self._inventory(reply))

    def _inventory(self, reply: Reply) -> vm_pb2.VmInstanceInventory:
        """The VM of a job's 200 body ``{"inventory": ...}``."""
        try:
            try:
                body = orjson.loads(reply.body)
            except orjson.JSONDecodeError as exc:
                raise errors.bad_response(
                    f"the body is not valid JSON ({exc.msg} at byte {exc.pos})"
                ) from None
            return translate_vm.inventory_from_body(body, self._tz)
        finally:
            reply.account.close()

    async def _fetch(
        self, query: validation.CandidateIsoQuery, caller: CallerAuth, deadline: Deadline
    ) -> ImageStream:
        """The images of ZStack's answer. On the compiled path the stream is published to the
        callers as soon as a 200's headers are in, and its images built as the body arrives."""
        # Coalesced calls join through the task running this fetch, as long as it exists.
        shared_by = asyncio.current_task() if self.coalescer.enabled else None
        arrival = None
        if wire.PATH == "compiled":
            arrival = Arrival(self._tz, shared_by=shared_by, publish=coalesce.publish)
        try:
            reply = await self._client.get_iso_candidates(query, caller, deadline, arrival)
        except BaseException as exc:
            if arrival is not None:
                arrival.fail(exc)
            raise
        if arrival is not None and arrival.stream is not None:
            return arrival.finish()
        return await open_stream(reply.body, self._tz, reply.account, shared_by=shared_by)


def _accepted(context: Any) -> jobs.Accepted:
    """What happens once ZStack has the call's job: the job's uuid goes on the call's record and to
    the caller, in the initial metadata."""

    async def accepted(job_uuid: str) -> None:
        record = calls.current.get()
        if record is not None:
            record.job_uuid, record.job_accepted = job_uuid, True
        await calls.send_initial_metadata(context, record, (jobs.JOB_METADATA_KEY, job_uuid))

    return accepted


class ImageServicer:
    """zstack.v1.ImageService: GetCandidateVm."""

    def __init__(self, client: ZStackClient, *, tz: ZoneInfo, default_timeout: float) -> None:
        self._client = client
        self._tz = tz
        self._default_timeout = default_timeout

    async def GetCandidateVm(
        self,
        request: image_svc.GetCandidateVmRequest,
        context: grpc.aio.ServicerContext[image_svc.GetCandidateVmRequest, Chunk],
    ) -> AsyncIterator[Chunk]:
        query = validation.check_candidate_vms(request)
        caller = self._client.credentials.authenticate_caller(context.invocation_metadata())
        deadline = Deadline.start(context.time_remaining(), self._default_timeout)
        reply = await self._client.get_candidate_vms(query, caller, deadline)
        vms = ImageStream(reply.body, self._tz, reply.account, translate_item=translate_vm.vm_from_json)
        reader = vms.reader()
        del vms
        try:
            for chunk in reader:
                yield chunk
        finally:
            reader.close()


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
        "AttachIso": grpc.unary_unary_rpc_method_handler(
            servicer.AttachIso,
            request_deserializer=svc.AttachIsoRequest.FromString,
            response_serializer=svc.AttachIsoResponse.SerializeToString,
        ),
        "DetachIso": grpc.unary_unary_rpc_method_handler(
            servicer.DetachIso,
            request_deserializer=svc.DetachIsoRequest.FromString,
            response_serializer=svc.DetachIsoResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    images = ImageServicer(servicer.client, tz=servicer.tz, default_timeout=servicer.default_timeout)
    image_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetCandidateVm": grpc.unary_stream_rpc_method_handler(
            writer.streaming(images.GetCandidateVm, idle_timeout),
            request_deserializer=image_svc.GetCandidateVmRequest.FromString,
            response_serializer=serialize_response,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(IMAGE_SERVICE_NAME, image_handlers),)
    )
    server.add_registered_method_handlers(IMAGE_SERVICE_NAME, image_handlers)
