"""Cuts ZStack's image list into stream messages, translating each chunk only when it is sent.

grpcio spends a roughly fixed cost per streamed message, so one message per image makes long lists
slow; one message for everything makes the first image late and can pass the caller's maximum
message size. Translating chunk by chunk lets the first images leave while later ones are still
being built, and lets the caller decode one chunk while the gateway builds the next. The rules (also
documented in the proto):

* the first message holds at most FIRST_CHUNK_IMAGES images, so the first image arrives early;
* later messages hold up to CHUNK_IMAGES images, fewer when images are large, so that a message
  stays near CHUNK_BYTES (sized from the average image in ZStack's JSON, which is larger than the
  protobuf form, without measuring every image);
* an empty list is one message with no images.

An :class:`ImageStream` is shared by coalesced calls: each chunk is translated once, by whichever
call needs it first, and kept for the others. A chunk that cannot be translated ends every call that
reaches it with the same error, after the chunks before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from zstack.v1 import vm_instance_service_pb2 as svc

from zstack_gateway import translate

FIRST_CHUNK_IMAGES = 16
CHUNK_IMAGES = 512
CHUNK_BYTES = 1024 * 1024


def chunk_bounds(count: int, body_bytes: int, *, first: int = FIRST_CHUNK_IMAGES) -> list[tuple[int, int]]:
    """``(start, stop)`` index pairs of each message for ``count`` images in a ``body_bytes`` body."""
    if count == 0:
        return [(0, 0)]
    per_image = max(1, body_bytes // count)
    size = max(1, min(CHUNK_IMAGES, CHUNK_BYTES // per_image))
    bounds = [(0, min(count, first, size))]
    start = bounds[0][1]
    while start < count:
        bounds.append((start, min(count, start + size)))
        start += size
    return bounds


class ImageStream:
    """ZStack's answer, checked for shape, translated lazily into stream messages."""

    def __init__(self, body: object, body_bytes: int, tz: ZoneInfo) -> None:
        self._items: list[Any] = translate.inventory_items(body)
        self._tz = tz
        self._bounds = chunk_bounds(len(self._items), body_bytes)
        self._built: list[svc.GetCandidateIsoResponse] = []
        self._failure: translate.TranslationError | None = None

    def __len__(self) -> int:
        return len(self._items)

    def messages(self) -> Iterator[svc.GetCandidateIsoResponse]:
        for index in range(len(self._bounds)):
            if index == len(self._built):
                self._build(index)
            yield self._built[index]

    def _build(self, index: int) -> None:
        if self._failure is not None:
            raise self._failure
        start, stop = self._bounds[index]
        message = svc.GetCandidateIsoResponse()
        add = message.inventories.add  # images are built in place: no copy into the message
        items, tz = self._items, self._tz
        try:
            for i in range(start, stop):
                translate.add_image(add, items[i], tz, f"inventories[{i}]")
                items[i] = None  # translated: its parsed JSON can go (memory stays bounded)
        except translate.TranslationError as exc:
            self._failure = exc
            raise
        self._built.append(message)
