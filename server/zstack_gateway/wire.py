"""One image's JSON text -> its serialized ImageInventory, by the compiled path where it is built.

Two paths give the same bytes:

* **compiled** (:mod:`zstack_gateway._wire`, Cython): scans the text and writes protobuf wire bytes
  directly, with no Python object per field. It handles what ZStack normally sends and returns None
  for anything else (a wrong type, a null where it cannot tell, an escape in a key or a date, a float
  or a big integer, a date it cannot read, a day whose UTC offset changes);
* **pure** (the reference): the text parsed by the json module, translated by
  :func:`translate.image_from_json` and serialized by protobuf. Every image the compiled path leaves
  runs here, so errors and log lines are always the reference's.

The compiled path is used when the extension was built (``make venv`` builds it where a C compiler
is present) and the environment does not set ``ZSTACK_GATEWAY_PURE`` (to anything but ``0`` or
empty), which forces the pure path: CI runs the tests both ways. :data:`PATH` says which is active.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson
from zstack.v1 import image_pb2

from zstack_gateway import errors, translate

__all__ = [
    "END",
    "FULL",
    "PATH",
    "REFERENCE",
    "complete_items",
    "image_bytes",
    "items_span",
    "list_start",
    "next_item",
    "reference_bytes",
    "take",
    "top_level_key",
]


def _load() -> ModuleType | None:
    if os.environ.get("ZSTACK_GATEWAY_PURE", "") not in ("", "0"):
        return None
    try:
        from zstack_gateway import _wire  # type: ignore[attr-defined]  # compiled, optional
    except ImportError:
        return None
    try:
        _wire.configure(
            _table(image_pb2.ImageInventory.DESCRIPTOR), _table(image_pb2.BackupStorageRef.DESCRIPTOR)
        )
    except ValueError:  # a proto the compiled path cannot follow: the reference does it all
        return None
    module: ModuleType = _wire
    return module


def _table(descriptor: Any) -> list[tuple[bytes, int, int]]:
    """(JSON key, field number, kind) for each field, the kinds as translate.py's table gives them."""
    kinds = translate._field_table(descriptor)
    return [(fd.json_name.encode("utf-8"), fd.number, kinds[fd.json_name][1]) for fd in descriptor.fields]


_compiled: Final = _load()
#: "compiled" or "pure": which path turns images into bytes in this process.
PATH: Final = "compiled" if _compiled is not None else "pure"


# --- the UTC offset of a day -----------------------------------------------------------------------

# A day's dates share one offset when the zone's offset holds across the day and a margin wider than
# any UTC offset (so that no time of the day falls in a fold or a gap). The offset is sampled every
# SAMPLE_HOURS across that span: no zone changes its offset and back within that time.
_MARGIN: Final = timedelta(hours=26)
_SAMPLE: Final = timedelta(hours=6)


def day_offset(tz: ZoneInfo, year: int, month: int, day: int) -> int | None:
    """The UTC offset in whole seconds of every time of the day in ``tz``, as translate.java_offset
    gives it, or None when the day does not have one offset (a change of offset near it)."""
    try:
        midnight = datetime(year, month, day)
        moment = midnight.replace(tzinfo=UTC) - _MARGIN
        end = moment + 2 * _MARGIN + timedelta(days=1)
    except (ValueError, OverflowError):
        return None
    offsets = set()
    while moment <= end:
        offsets.add(moment.astimezone(tz).utcoffset())
        moment += _SAMPLE
    offsets.add(end.astimezone(tz).utcoffset())
    # The reference at both ends of the day, which also covers Java's rule for early years.
    offsets.add(translate.java_offset(midnight, tz))
    offsets.add(translate.java_offset(midnight + timedelta(hours=23, minutes=59, seconds=59), tz))
    if len(offsets) != 1:
        return None
    offset = offsets.pop()
    if offset is None or offset % timedelta(seconds=1):
        return None
    return offset // timedelta(seconds=1)


_days: dict[ZoneInfo, Any] = {}


def _days_of(tz: ZoneInfo) -> Any:
    days = _days.get(tz)
    if days is None:
        assert _compiled is not None
        compute: Callable[[int, int, int], int | None] = lambda y, m, d: day_offset(tz, y, m, d)  # noqa: E731
        days = _days[tz] = _compiled.Days(compute)
    return days


# --- the two paths ---------------------------------------------------------------------------------


def image_bytes(text: Any, tz: ZoneInfo, path: str) -> bytes:
    """The serialized ImageInventory for ``text``, the JSON of one image (bytes or msgspec.Raw, valid
    JSON); raises what :func:`reference_bytes` raises."""
    if _compiled is not None:
        data: bytes | None = _compiled.image(text, _days_of(tz))
        if data is not None:
            return data
    return reference_bytes(text, tz, path)


#: Why :func:`take` stopped: FULL (the images or bytes asked for are taken; ``over``, when not 0, is
#: the framed size of the next image, which did not fit), END (the list's end), REFERENCE (the next
#: image is left to the reference translation), LOST (the compiled scan cannot follow the text).
FULL: Final = 0
END: Final = 1
REFERENCE: Final = 2
LOST: Final = 3


def take(
    text: memoryview, pos: int, max_images: int, max_bytes: int, tz: ZoneInfo
) -> tuple[bytes, int, int, int, int]:
    """Compiled path only: the images of the list ``text`` from ``pos``, translated and each framed as
    field 1 (``inventories``) of GetCandidateIsoResponse, at most ``max_images`` and ``max_bytes``.
    Returns ``(data, images, pos, stop, over)``: see FULL and the other reasons above."""
    assert _compiled is not None
    taken: tuple[bytes, int, int, int, int] = _compiled.take(text, pos, max_images, max_bytes, _days_of(tz))
    return taken


def next_item(text: memoryview, pos: int) -> tuple[int, int]:
    """Compiled path only: where the next item of the list ``text`` starts and ends, from ``pos`` (1,
    or where the one before ended); (-1, -1) at the end; ValueError where the scan cannot follow."""
    assert _compiled is not None
    found: tuple[int, int] = _compiled.next_item(text, pos)
    return found


def list_start(body: memoryview, limit: int) -> int:
    """Compiled path only: where the list under the body's top-level ``inventories`` key starts,
    found within ``limit`` bytes; -1 for any other shape (an escaped key, a key before it whose value
    runs past ``limit``, ...)."""
    assert _compiled is not None
    start: int = _compiled.list_start(body, limit)
    return start


def items_span(body: memoryview, pos: int, size: int) -> tuple[int, int, int]:
    """Compiled path only: from ``pos`` in the list (just past its ``[``, or where an item ended), the
    items that start within ``size`` bytes: ``(first, last, end)``, the first one's start, the last
    one's end, and past the list's ``]`` when it ends there (else -1); ValueError where the text does
    not read as a list."""
    assert _compiled is not None
    span: tuple[int, int, int] = _compiled.items_span(body, pos, size)
    return span


def complete_items(body: memoryview, pos: int) -> tuple[int, int, int]:
    """Compiled path only: :func:`items_span` for a list still arriving: the items from ``pos`` that
    are complete in ``body`` (each followed by a comma or the list's ``]``), ``(first, last, end)``;
    ValueError where what arrived does not read as a list."""
    assert _compiled is not None
    span: tuple[int, int, int] = _compiled.complete_items(body, pos)
    return span


def top_level_key(body: memoryview, pos: int) -> int:
    """Compiled path only: 1 when the rest of the body's top-level object from ``pos`` (after a
    member's value) holds another ``inventories`` key or an escaped key, 0 when not, -1 where it
    does not read as the rest of an object."""
    assert _compiled is not None
    found: int = _compiled.top_level_key(body, pos)
    return found


def reference_bytes(text: Any, tz: ZoneInfo, path: str) -> bytes:
    """The reference: parse with the json module, translate, serialize."""
    return translate.image_from_json(parse(text), tz, path).SerializeToString()


def parse(text: Any) -> Any:
    """One item of the list, parsed as the gateway always has: the json module (big integers stay
    integers), orjson for nesting deeper than the json module's recursion allows."""
    decoded = codecs.utf_8_decode(memoryview(text), "strict", True)[0]
    try:
        return json.loads(decoded)
    except RecursionError:
        try:
            return orjson.loads(decoded)
        except orjson.JSONDecodeError as exc:
            raise errors.bad_response(f"the body is not valid JSON ({exc.msg})") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise errors.bad_response(f"the body is not valid JSON ({exc})") from None
