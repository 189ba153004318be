"""zstack_iso: a Python client of the zstack-grpc-gateway's ISO workflow: candidate ISOs of a VM,
candidate VMs of an ISO, attach and detach an ISO.

    from zstack_iso import IsoClient, TlsConfig, ZStackError

    # a pass-through gateway: your own ZStack session
    with IsoClient("127.0.0.1:50051", session=session_uuid) as client:
        try:
            for image in client.iter_candidates(vm_uuid):
                size = image.size if image.HasField("size") else None  # absent, not 0
                print(image.uuid, image.name, size)
        except ZStackError as err:
            print(err.code.name, err.zstack_code, err.message)

    # an account or AccessKey gateway with caller tokens, over mutual TLS
    tls = TlsConfig.from_files(cacert="ca.pem", cert="client.pem", key="client.key")
    with IsoClient("gw.example:50051", token=caller_token, tls=tls) as client:
        images = client.list_candidates(vm_uuid)

    # the rest of the workflow; a request_id makes the attach safe to repeat
    with IsoClient("127.0.0.1:50051", session=session_uuid) as client:
        vms = client.list_candidate_vms(iso_uuid)
        vm = client.attach_iso(vms[0].uuid, iso_uuid, request_id=str(uuid.uuid4()))
        print([rom.iso_uuid for rom in vm.vm_cd_roms])
        client.detach_iso(vm.uuid, iso_uuid)

Images are ``zstack.v1.image_pb2.ImageInventory`` messages, VMs
``zstack.v1.vm_pb2.VmInstanceInventory``; scalar fields ZStack left out are
absent (``HasField`` is False), not empty. :class:`AsyncIsoClient` is the same on asyncio.
``IsoClient.from_channel(channel, ...)`` reuses a channel the caller has. Every failed call raises
:class:`ZStackError`. :func:`message_to_dict` gives an image as ZStack's JSON would.

The names are imported on first use, so that ``import zstack_iso.cli`` loads no gRPC before the
command has set gRPC's logging up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zstack.v1.image_pb2 import BackupStorageRef, ImageInventory
    from zstack.v1.vm_pb2 import VmCdRomInventory, VmInstanceInventory

    from zstack_iso.client import DEFAULT_TIMEOUT, AsyncIsoClient, IsoClient
    from zstack_iso.errors import ZStackError
    from zstack_iso.jsonform import message_to_dict
    from zstack_iso.tls import TlsConfig

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncIsoClient",
    "BackupStorageRef",
    "ImageInventory",
    "IsoClient",
    "TlsConfig",
    "VmCdRomInventory",
    "VmInstanceInventory",
    "ZStackError",
    "message_to_dict",
]

_WHERE = {
    "DEFAULT_TIMEOUT": "zstack_iso.client",
    "AsyncIsoClient": "zstack_iso.client",
    "IsoClient": "zstack_iso.client",
    "BackupStorageRef": "zstack.v1.image_pb2",
    "ImageInventory": "zstack.v1.image_pb2",
    "TlsConfig": "zstack_iso.tls",
    "VmCdRomInventory": "zstack.v1.vm_pb2",
    "VmInstanceInventory": "zstack.v1.vm_pb2",
    "ZStackError": "zstack_iso.errors",
    "message_to_dict": "zstack_iso.jsonform",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'zstack_iso' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
