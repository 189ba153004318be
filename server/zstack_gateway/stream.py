"""Cuts the image list into stream messages.

grpcio spends a roughly fixed cost per streamed message, so one message per image makes long
lists slow; one message for everything makes the first image late and can pass the caller's
maximum message size. The rules (also documented in the proto):

* the first message holds at most FIRST_CHUNK_IMAGES images, so the first image arrives early;
* later messages hold up to CHUNK_IMAGES images each;
* no message grows past about CHUNK_BYTES (a single image larger than that goes alone);
* an empty list is one message with no images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from zstack.v1 import image_pb2
from zstack.v1 import vm_instance_service_pb2 as svc

FIRST_CHUNK_IMAGES = 16
CHUNK_IMAGES = 512
CHUNK_BYTES = 1024 * 1024


def chunks(
    images: Iterable[image_pb2.ImageInventory],
    *,
    first: int = FIRST_CHUNK_IMAGES,
    size: int = CHUNK_IMAGES,
    max_bytes: int = CHUNK_BYTES,
) -> Iterator[svc.GetCandidateIsoResponse]:
    batch: list[image_pb2.ImageInventory] = []
    batch_bytes = 0
    limit = first
    sent = False
    for image in images:
        image_bytes = image.ByteSize()
        if batch and (len(batch) >= limit or batch_bytes + image_bytes > max_bytes):
            yield svc.GetCandidateIsoResponse(inventories=batch)
            sent = True
            batch, batch_bytes, limit = [], 0, size
        batch.append(image)
        batch_bytes += image_bytes
    if batch or not sent:
        yield svc.GetCandidateIsoResponse(inventories=batch)
