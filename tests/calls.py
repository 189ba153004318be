"""What callers do, for tests in several files: grpc.aio calls in bulk."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import grpc
import grpc.aio
from conftest import AUTH
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc


async def deadline_storm(
    target: str, calls: int, concurrency: int, vms: Sequence[str], deadline_s: float
) -> Counter[grpc.StatusCode]:
    """``calls`` calls, ``concurrency`` at a time, each with a ``deadline_s`` deadline, to the VMs
    ``vms`` in turn; how many ended with each status code."""
    codes: Counter[grpc.StatusCode] = Counter()
    todo = list(range(calls))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)

        async def worker() -> None:
            while todo:
                request = svc.GetCandidateIsoRequest(vm_instance_uuid=vms[todo.pop() % len(vms)])
                try:
                    async for _ in stub.GetCandidateIso(request, metadata=AUTH, timeout=deadline_s):
                        pass
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code()] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes
