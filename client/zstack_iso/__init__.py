"""zstack_iso: a Python client of the zstack-grpc-gateway's ISO candidate API.

    from zstack_iso import IsoClient, ZStackError

    with IsoClient("127.0.0.1:50051", session=session_uuid) as client:
        try:
            for image in client.iter_candidates(vm_uuid):
                print(image.uuid, image.name)
        except ZStackError as err:
            print(err.code.name, err.zstack_code, err.message)

Images are ``zstack.v1.image_pb2.ImageInventory`` messages. :class:`AsyncIsoClient` is the same on
asyncio. Every failed call raises :class:`ZStackError`.
"""

from zstack.v1.image_pb2 import BackupStorageRef, ImageInventory

from zstack_iso.client import DEFAULT_TIMEOUT, AsyncIsoClient, IsoClient
from zstack_iso.errors import ZStackError

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncIsoClient",
    "BackupStorageRef",
    "ImageInventory",
    "IsoClient",
    "ZStackError",
]
