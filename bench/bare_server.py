"""A bare grpc.aio server for P5: the framework's limit on this machine.

It serves ``zstack.v1.VmInstanceService/GetCandidateIso`` and streams, for every call, the same
messages the gateway would send for the simulator's data, built once at start with the gateway's
own translate and stream modules (``stream.ImageStream``, or ``stream.chunks`` over
``translate.inventories_from_body`` in gateways before it). No upstream call, no validation, no
interceptor: what is left is grpc.aio's own cost per call.

With ``--relay`` it is P5's floor for any gateway built like this one: for every call it first
GETs the candidates from the simulator with one pooled aiohttp session (the body read and dropped),
on uvloop where installed as the gateway is, then streams the same prebuilt messages. No
translation, no validation, no interceptor, no log line, no metrics: grpc.aio's cost per call plus
one HTTP request.

    python bench/bare_server.py --listen 127.0.0.1:0 --zstack-url http://127.0.0.1:PORT [--relay]

prints ``bare-server ready on HOST:PORT`` once it serves, and stops on SIGTERM/SIGINT or when the
process that started it goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import zstack_sim
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import stream, translate

# The gateway's default --zstack-tz, so dates translate exactly as the gateway does.
ZSTACK_TZ = ZoneInfo("Asia/Shanghai")


def fetch_messages(zstack_url: str, vm_uuid: str) -> list[svc.GetCandidateIsoResponse]:
    """The stream messages the gateway would send for ``vm_uuid``'s candidates on that simulator."""
    url = f"{zstack_url}/zstack/v1/vm-instances/{vm_uuid}/iso-candidates"
    request = urllib.request.Request(url, headers={"Authorization": f"OAuth {zstack_sim.DEMO_SESSION_UUID}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return gateway_messages(raw)


def gateway_messages(raw: bytes) -> list[svc.GetCandidateIsoResponse]:
    """What the gateway's own modules make of this body: its lazy ``stream.ImageStream`` where the
    gateway has one (over the raw body, yielding serialized ``stream.Chunk`` s, in gateways that have
    them), else ``stream.chunks`` over ``translate.inventories_from_body``."""
    body = json.loads(raw)
    image_stream: Any = getattr(stream, "ImageStream", None)
    if image_stream is not None and hasattr(stream, "Chunk"):
        return [
            svc.GetCandidateIsoResponse.FromString(c.data) for c in image_stream(raw, ZSTACK_TZ).messages()
        ]
    if image_stream is not None:
        return list(image_stream(body, len(raw), ZSTACK_TZ).messages())
    chunks: Any = getattr(stream, "chunks")  # noqa: B009 - absent from the newer gateway
    return list(chunks(translate.inventories_from_body(body, ZSTACK_TZ)))


class BareServicer(svc_grpc.VmInstanceServiceServicer):
    def __init__(self, messages: list[svc.GetCandidateIsoResponse], relay: Relay | None = None) -> None:
        self._messages = messages
        self._relay = relay

    async def GetCandidateIso(
        self, request: svc.GetCandidateIsoRequest, context: Any
    ) -> AsyncIterator[svc.GetCandidateIsoResponse]:
        if self._relay is not None:
            await self._relay.get()
        for message in self._messages:
            yield message


class Relay:
    """One GET of the candidates per call, on a pooled aiohttp session (``--relay``)."""

    def __init__(self, zstack_url: str, vm_uuid: str) -> None:
        import aiohttp

        self._url = f"{zstack_url}/zstack/v1/vm-instances/{vm_uuid}/iso-candidates"
        self._headers = {"Authorization": f"OAuth {zstack_sim.DEMO_SESSION_UUID}"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def get(self) -> None:
        async with self._session.get(self._url, headers=self._headers) as response:
            await response.read()

    async def close(self) -> None:
        await self._session.close()


async def _watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
        await asyncio.sleep(1.0)


async def serve(
    listen: str, messages: list[svc.GetCandidateIsoResponse], relay: tuple[str, str] | None = None
) -> None:
    server = grpc.aio.server()
    relaying = Relay(*relay) if relay is not None else None
    svc_grpc.add_VmInstanceServiceServicer_to_server(BareServicer(messages, relaying), server)
    port = server.add_insecure_port(listen)
    await server.start()
    images = sum(len(m.inventories) for m in messages)
    host = listen.rpartition(":")[0]
    print(f"bare-server ready on {host}:{port} ({len(messages)} messages, {images} images)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(_watch_parent(stop))
    await stop.wait()
    watcher.cancel()
    await server.stop(0)
    if relaying is not None:
        await relaying.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: a free one)")
    parser.add_argument("--zstack-url", required=True, help="the simulator whose data to serve")
    parser.add_argument("--vm", default=zstack_sim.DEMO_VM_UUID, help="the VM whose candidates to serve")
    parser.add_argument("--relay", action="store_true", help="one GET to the simulator per call, on uvloop")
    args = parser.parse_args()
    messages = fetch_messages(args.zstack_url, args.vm)
    if not args.relay:
        asyncio.run(serve(args.listen, messages))
        return
    try:
        import uvloop
    except ImportError:  # as the gateway: asyncio's own loop where uvloop is not installed
        asyncio.run(serve(args.listen, messages, (args.zstack_url, args.vm)))
    else:
        uvloop.run(serve(args.listen, messages, (args.zstack_url, args.vm)))


if __name__ == "__main__":
    main()
