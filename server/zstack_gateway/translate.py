"""ZStack JSON -> protobuf translation.

The input is a ZStack REST body already parsed by a JSON parser (dicts, lists, str, int, float, bool,
None). This module only translates: no I/O and no gRPC status logic.

Images are strict: a known field holding a value of the wrong JSON type raises
:class:`TranslationError` naming the field's path. Unknown keys are ignored, and absent or null
fields stay unset. Dates are lenient: one the gateway cannot read leaves its field unset and is
logged, because a bad date must not fail a whole call.

ZStack's error bodies are read by :mod:`zstack_gateway.error_json`.

Messages are built with direct keyword construction from a field table derived from the protos'
descriptors, which is about ten times faster than ``json_format.ParseDict``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from zstack.v1 import image_pb2

from zstack_gateway import errors
from zstack_gateway.error_json import type_name, utf8_ok

__all__ = [
    "TranslationError",
    "add_image",
    "backup_storage_ref_from_json",
    "image_from_json",
    "inventories_from_body",
    "inventory_items",
    "parse_zstack_date",
]

log = logging.getLogger("zstack_gateway.translate")

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TS_MIN_SECONDS: Final = -62_135_596_800
_TS_MAX_SECONDS: Final = 253_402_300_799
# How much of an offending value an error or log line may quote.
_REPR_LIMIT: Final = 40


# --- errors -------------------------------------------------------------------------------------


class TranslationError(errors.GatewayError):
    """A ZStack response whose shape or field types the gateway cannot translate: INTERNAL
    (``ZSTACK_BAD_RESPONSE``), like any answer the gateway cannot read.

    ``field`` is the JSON path of the offending value (``inventories[3].size``) and ``problem`` says
    what was wrong with it. The message never quotes more than a short cut of the value.
    """

    def __init__(self, field: str, problem: str) -> None:
        err = errors.bad_response(f"{field}: {problem}")
        super().__init__(
            code=err.code,
            message=err.message,
            reason=err.reason,
            error_code=err.error_code,
            http_status=err.http_status,
        )
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        return f"invalid ZStack response: {self.field}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.problem))


def _short_repr(value: object) -> str:
    """A repr of ``value`` cut to about 40 characters; never renders a huge value in full."""
    if isinstance(value, str | int | float | bool) or value is None:
        if isinstance(value, str) and len(value) > _REPR_LIMIT:
            return repr(value[:_REPR_LIMIT]) + "…"
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
            return f"<int of {value.bit_length()} bits>"
        text = repr(value)
    else:
        size = len(value) if isinstance(value, list | dict) else None
        text = f"<{type(value).__name__}>" if size is None else f"<{type(value).__name__} of {size}>"
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "…"


def _wrong_type(path: str, expected: str, value: object) -> TranslationError:
    return TranslationError(path, f"expected {expected}, got {type_name(value)}")


# --- dates --------------------------------------------------------------------------------------


# Gson's default US date form: Java 8 writes "Jul 22, 2022 11:54:07 AM"; Java 9+ (CLDR) adds a comma
# after the year, and Java 20+ puts U+202F before AM/PM (U+00A0 is accepted as well).
_DATE_RE: Final = re.compile(
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([0-9]{1,2}), ([0-9]{4}),? "
    r"([0-9]{1,2}):([0-9]{2}):([0-9]{2})[ \u202f\u00a0]([AP]M)"
)
_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
_EPOCH: Final = datetime(1970, 1, 1)


# Readings of recently seen date strings per zone: an image and its refs often share a date. The
# cache is cleared whenever it fills, which bounds its memory.
_DATE_CACHE_SIZE: Final = 4096
_date_cache: dict[tuple[str, ZoneInfo], tuple[int, int] | None] = {}
_NOT_CACHED: Final = (0, -1)  # a sentinel: no reading has negative nanos


#: Java's zone tables start at the first moment a 32-bit count of seconds reaches (UTC); before it,
#: Java gives every time the zone's raw (standard) offset.
_JAVA_ZONES_START: Final = datetime(1901, 12, 13, 20, 45, 52)
_raw_offsets: dict[ZoneInfo, timedelta] = {}


def java_offset(local: datetime, tz: ZoneInfo) -> timedelta | None:
    """The UTC offset ZStack's Java runtime gives the wall-clock time ``local`` (naive) in ``tz``.

    Java reads a time that occurs twice (a fall-back fold) or never (a spring-forward gap) in the
    zone's standard time, where zoneinfo's default (fold=0) takes the offset in force before the
    change: daylight time in a fold. Before 1901-12-13 Java uses the zone's raw offset, where
    zoneinfo uses local mean time (Asia/Shanghai: +08:00, not +08:05:43).
    """
    if local < _JAVA_ZONES_START:
        return _raw_offset(tz)
    first = tz.utcoffset(local)
    later = tz.utcoffset(local.replace(fold=1))
    if first == later:
        return first
    # A gap or a fold: the reading whose daylight saving is smaller is standard time.
    first_dst = tz.dst(local) or timedelta(0)
    later_dst = tz.dst(local.replace(fold=1)) or timedelta(0)
    return later if later_dst <= first_dst else first


def _raw_offset(tz: ZoneInfo) -> timedelta:
    raw = _raw_offsets.get(tz)
    if raw is None:
        probe = datetime(2000, 1, 1)
        raw = (tz.utcoffset(probe) or timedelta(0)) - (tz.dst(probe) or timedelta(0))
        _raw_offsets[tz] = raw
    return raw


def _text_date_parts(text: str, tz: ZoneInfo) -> tuple[int, int] | None:
    match = _DATE_RE.fullmatch(text)
    if match is None:
        return None
    month, day, year, hour, minute, second, half = match.groups()
    hour12 = int(hour)
    if not 1 <= hour12 <= 12:
        return None
    try:
        local = datetime(
            int(year),
            _MONTHS[month],
            int(day),
            hour12 % 12 + (12 if half == "PM" else 0),
            int(minute),
            int(second),
        )
        offset = java_offset(local, tz)
    except (ValueError, OverflowError):
        return None
    delta = local - _EPOCH
    if offset is not None:
        delta -= offset
    seconds = delta.days * 86_400 + delta.seconds
    if not _TS_MIN_SECONDS <= seconds <= _TS_MAX_SECONDS:
        return None
    return seconds, 0


def _date_parts(value: object, tz: ZoneInfo) -> tuple[int, int] | None:
    """``(seconds, nanos)`` since the Unix epoch for a ZStack date, or None when unreadable."""
    if isinstance(value, str):
        if len(value) > 40:  # far longer than any date form; not worth a regex or a cache slot
            return None
        key = (value, tz)
        parts = _date_cache.get(key, _NOT_CACHED)
        if parts is not _NOT_CACHED:
            return parts
        parts = _text_date_parts(value, tz)
        if len(_date_cache) >= _DATE_CACHE_SIZE:
            _date_cache.clear()
        _date_cache[key] = parts
        return parts
    # Epoch milliseconds: an int, or a float with no fractional part; never a bool.
    if type(value) is float:
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        seconds, millis = divmod(value, 1000)
        if not _TS_MIN_SECONDS <= seconds <= _TS_MAX_SECONDS:
            return None
        return seconds, millis * 1_000_000
    return None


def parse_zstack_date(value: object, tz: ZoneInfo) -> Timestamp | None:
    """Read a ZStack date (Gson's ``MMM d, yyyy[,] h:mm:ss a`` in ``tz``, or epoch milliseconds).

    Returns None for anything it cannot read, None included. Does not log.
    """
    parts = _date_parts(value, tz)
    if parts is None:
        return None
    return Timestamp(seconds=parts[0], nanos=parts[1])


class _UnreadableDates:
    """Logs each distinct unreadable date once per process, remembering a bounded number of them.

    Once ``limit`` values are remembered, new ones are only counted in ``unlogged``.
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._seen: set[object] = set()
        self.unlogged = 0

    @staticmethod
    def _key(value: object) -> object:
        # Short strings and numbers are their own key; a long string is keyed by a digest of it, so
        # memory stays bounded; other types (lists, objects, bools) count as one value per type.
        if isinstance(value, str):
            return value if len(value) <= 64 else ("long str", len(value), hash(value))
        if isinstance(value, float):
            return ("float", repr(value))  # repr: NaN is not equal to itself
        if isinstance(value, int) and not isinstance(value, bool):
            return ("int", value)
        return ("type", type(value).__name__)

    def report(self, path: str, value: object) -> None:
        key = self._key(value)
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) >= self.limit:
                self.unlogged += 1
                return
            self._seen.add(key)
            full = len(self._seen) >= self.limit
        log.warning("unreadable ZStack date at %s: %s; the field is left unset", path, _short_repr(value))
        if full:
            log.warning("%d distinct unreadable dates logged; further ones are only counted", self.limit)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.unlogged = 0


unreadable_dates: Final = _UnreadableDates()


# --- images -------------------------------------------------------------------------------------

# Field kinds of the translation table. _REFS (the image's backupStorageRefs) is translated by
# image_from_json itself.
_STR: Final = 0
_INT: Final = 1
_BOOL: Final = 2
_DATE: Final = 3
_REFS: Final = 4

_FieldTable = dict[str, tuple[str, int]]


def _field_table(descriptor: Descriptor) -> _FieldTable:
    """Map each JSON key (the proto field's lowerCamelCase JSON name) to (field name, kind)."""
    table: _FieldTable = {}
    for fd in descriptor.fields:
        message = fd.message_type
        if fd.is_repeated:
            if message is not image_pb2.BackupStorageRef.DESCRIPTOR:
                raise RuntimeError(f"translate: no rule for repeated field {fd.full_name}")
            kind = _REFS
        elif message is not None:
            if message.full_name != "google.protobuf.Timestamp":
                raise RuntimeError(f"translate: no rule for message field {fd.full_name}")
            kind = _DATE
        elif fd.type == FieldDescriptor.TYPE_STRING:
            kind = _STR
        elif fd.type == FieldDescriptor.TYPE_INT64:
            kind = _INT
        elif fd.type == FieldDescriptor.TYPE_BOOL:
            kind = _BOOL
        else:
            raise RuntimeError(f"translate: no rule for field {fd.full_name}")
        table[fd.json_name] = (fd.name, kind)
    return table


_IMAGE_FIELDS: Final = _field_table(image_pb2.ImageInventory.DESCRIPTOR)
_REF_FIELDS: Final = _field_table(image_pb2.BackupStorageRef.DESCRIPTOR)
_REFS_KEY: Final = image_pb2.ImageInventory.DESCRIPTOR.fields_by_name["backup_storage_refs"].json_name


def _int64(value: object, path: str) -> int:
    if isinstance(value, bool):
        raise _wrong_type(path, "an integer", value)
    if isinstance(value, float):
        if not value.is_integer():
            raise TranslationError(path, f"expected an integer, got float {_short_repr(value)}")
        value = int(value)
    if not isinstance(value, int):
        raise _wrong_type(path, "an integer", value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise TranslationError(path, f"integer out of int64 range: {_short_repr(value)}")
    return value


_M = TypeVar("_M", image_pb2.ImageInventory, image_pb2.BackupStorageRef)


def _translate(
    make: Callable[..., _M], obj: dict[Any, Any], table: _FieldTable, tz: ZoneInfo, path: str
) -> _M:
    """Build a message with ``make`` (its class, or a repeated field's ``add``) from a JSON object.

    Scalars go in as keyword arguments and dates are set on the built message afterwards: building
    sub-messages first and copying them in takes about twice as long.
    """
    kwargs: dict[str, Any] = {}
    dates: list[tuple[str, int, int]] = []
    for key, value in obj.items():
        spec = table.get(key)
        if spec is None or value is None:
            continue
        name, kind = spec
        if kind == _STR:
            if type(value) is not str and not isinstance(value, str):
                raise _wrong_type(f"{path}.{key}", "a string", value)
            kwargs[name] = value
        elif kind == _INT:
            if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
                value = _int64(value, f"{path}.{key}")
            kwargs[name] = value
        elif kind == _BOOL:
            if type(value) is not bool:
                raise _wrong_type(f"{path}.{key}", "a boolean", value)
            kwargs[name] = value
        elif kind == _DATE:
            parts = _date_parts(value, tz)
            if parts is None:
                unreadable_dates.report(f"{path}.{key}", value)
            else:
                dates.append((name, parts[0], parts[1]))
        # _REFS: image_from_json adds the refs to the built image.
    try:
        message = make(**kwargs)
    except ValueError:
        raise _bad_text(kwargs, table, path) from None
    for name, seconds, nanos in dates:
        stamp = getattr(message, name)
        stamp.seconds = seconds
        if nanos:
            stamp.nanos = nanos
    return message


def _bad_text(kwargs: dict[str, Any], table: _FieldTable, path: str) -> Exception:
    """The error for a message that refused its checked fields.

    The only value a checked field can still refuse is a string that is not valid Unicode (a lone
    surrogate from a JSON escape such as "\\ud800"), so name the field holding it.
    """
    for key, (name, kind) in table.items():
        value = kwargs.get(name)
        if kind == _STR and isinstance(value, str) and not utf8_ok(value):
            return TranslationError(f"{path}.{key}", "string is not valid Unicode (lone surrogate)")
    return TranslationError(path, "the message refused a field")


def backup_storage_ref_from_json(obj: object, tz: ZoneInfo, path: str) -> image_pb2.BackupStorageRef:
    """Translate one ``ImageBackupStorageRefInventory`` object; raises TranslationError."""
    if not isinstance(obj, dict):
        raise _wrong_type(path, "an object", obj)
    return _translate(image_pb2.BackupStorageRef, obj, _REF_FIELDS, tz, path)


def image_from_json(obj: object, tz: ZoneInfo, path: str = "image") -> image_pb2.ImageInventory:
    """Translate one ``ImageInventory`` object; raises TranslationError."""
    return add_image(image_pb2.ImageInventory, obj, tz, path)


def add_image(
    make: Callable[..., image_pb2.ImageInventory], obj: object, tz: ZoneInfo, path: str
) -> image_pb2.ImageInventory:
    """Translate one ``ImageInventory`` object with ``make``: the message class, or a repeated
    field's ``add``, which builds the image in place in a response and saves copying it there."""
    if not isinstance(obj, dict):
        raise _wrong_type(path, "an object", obj)
    image = _translate(make, obj, _IMAGE_FIELDS, tz, path)
    refs = obj.get(_REFS_KEY)
    if refs is not None:
        if not isinstance(refs, list):
            raise _wrong_type(f"{path}.{_REFS_KEY}", "a list", refs)
        # Each ref is built in place in the image's repeated field, which saves a copy.
        add = image.backup_storage_refs.add
        for index, ref in enumerate(refs):
            ref_path = f"{path}.{_REFS_KEY}[{index}]"
            if not isinstance(ref, dict):
                raise _wrong_type(ref_path, "an object", ref)
            _translate(add, ref, _REF_FIELDS, tz, ref_path)
    return image


def inventory_items(body: object) -> list[Any]:
    """The still untranslated list of a success body ``{"inventories": [...]}``, its shape checked."""
    if not isinstance(body, dict):
        raise _wrong_type("(body)", "an object", body)
    if "inventories" not in body:
        raise TranslationError("inventories", "missing")
    items = body["inventories"]
    if not isinstance(items, list):
        raise _wrong_type("inventories", "a list", items)
    return items


def inventories_from_body(body: object, tz: ZoneInfo) -> list[image_pb2.ImageInventory]:
    """Translate a success body ``{"inventories": [ImageInventory, ...]}``; raises TranslationError."""
    items = inventory_items(body)
    return [image_from_json(item, tz, f"inventories[{index}]") for index, item in enumerate(items)]
