"""ZStack JSON -> ``VmInstanceInventory`` (with its NICs, used IPs, volumes and CD-ROMs).

The same rules as :mod:`zstack_gateway.translate` for images: strict on types (a known field
holding a value of the wrong JSON type raises :class:`~zstack_gateway.translate.TranslationError`
naming the field's path, e.g. ``inventory.vmNics[0].deviceId``), lenient on dates (an unreadable date
leaves its field unset and is logged once), unknown keys ignored, absent or null fields unset.

The field tables are derived from the messages' descriptors, so a field added to vm.proto is
translated without a line here. Kinds: string, int64, int32, bool, bytes (ZStack's ``byte[]``, a JSON
array of numbers from -128 to 255), Timestamp, a nested message and a repeated message.
"""

from __future__ import annotations

from typing import Any, Final
from zoneinfo import ZoneInfo

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from zstack.v1 import vm_pb2

from zstack_gateway.error_json import type_name
from zstack_gateway.translate import TranslationError, _date_parts, _int64, _short_repr, unreadable_dates

__all__ = ["inventory_from_body", "vm_from_json"]

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
#: Longest byte array read (an IPv6 address is 16 bytes).
_MAX_BYTES: Final = 1024

_STR, _INT64, _INT32, _BOOL, _BYTES, _DATE, _MESSAGE, _LIST = range(8)
_Table = dict[str, tuple[str, int, Descriptor | None]]
_tables: dict[str, _Table] = {}


def _table(descriptor: Any) -> _Table:
    table = _tables.get(descriptor.full_name)
    if table is not None:
        return table
    table = {}
    for fd in descriptor.fields:
        message = fd.message_type
        sub: Descriptor | None = None
        if message is not None and message.full_name == "google.protobuf.Timestamp":
            if fd.is_repeated:
                raise RuntimeError(f"translate_vm: no rule for repeated dates {fd.full_name}")
            kind = _DATE
        elif message is not None:
            kind, sub = (_LIST if fd.is_repeated else _MESSAGE), message
        elif fd.is_repeated:
            raise RuntimeError(f"translate_vm: no rule for repeated field {fd.full_name}")
        else:
            kinds = {
                FieldDescriptor.TYPE_STRING: _STR,
                FieldDescriptor.TYPE_INT64: _INT64,
                FieldDescriptor.TYPE_INT32: _INT32,
                FieldDescriptor.TYPE_BOOL: _BOOL,
                FieldDescriptor.TYPE_BYTES: _BYTES,
            }
            if fd.type not in kinds:
                raise RuntimeError(f"translate_vm: no rule for field {fd.full_name}")
            kind = kinds[fd.type]
        table[fd.json_name] = (fd.name, kind, sub)
    _tables[descriptor.full_name] = table
    return table


def _wrong(path: str, expected: str, value: object) -> TranslationError:
    return TranslationError(path, f"expected {expected}, got {type_name(value)}")


def _bytes(value: object, path: str) -> bytes:
    if not isinstance(value, list):
        raise _wrong(path, "a list of byte values", value)
    if len(value) > _MAX_BYTES:
        raise TranslationError(path, f"more than {_MAX_BYTES} bytes")
    out = bytearray()
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not -128 <= item <= 255:
            raise TranslationError(
                f"{path}[{index}]", f"expected a byte (-128..255), got {_short_repr(item)}"
            )
        out.append(item & 0xFF)
    return bytes(out)


def _fill(message: Message, obj: object, tz: ZoneInfo, path: str) -> None:
    if not isinstance(obj, dict):
        raise _wrong(path, "an object", obj)
    table = _table(message.DESCRIPTOR)
    for key, value in obj.items():
        spec = table.get(key)
        if spec is None or value is None:
            continue
        name, kind, _ = spec
        here = f"{path}.{key}"
        if kind == _STR:
            if not isinstance(value, str):
                raise _wrong(here, "a string", value)
            try:
                setattr(message, name, value)
            except ValueError:
                raise TranslationError(here, "string is not valid Unicode (lone surrogate)") from None
        elif kind == _INT64:
            setattr(message, name, _int64(value, here))
        elif kind == _INT32:
            number = _int64(value, here)
            if not _INT32_MIN <= number <= _INT32_MAX:
                raise TranslationError(here, f"integer out of int32 range: {_short_repr(number)}")
            setattr(message, name, number)
        elif kind == _BOOL:
            if type(value) is not bool:
                raise _wrong(here, "a boolean", value)
            setattr(message, name, value)
        elif kind == _BYTES:
            setattr(message, name, _bytes(value, here))
        elif kind == _DATE:
            parts = _date_parts(value, tz)
            if parts is None:
                unreadable_dates.report(here, value)
            else:
                stamp = getattr(message, name)
                stamp.seconds, stamp.nanos = parts
        elif kind == _MESSAGE:
            _fill(getattr(message, name), value, tz, here)
        else:  # _LIST
            if not isinstance(value, list):
                raise _wrong(here, "a list", value)
            repeated = getattr(message, name)
            for index, item in enumerate(value):
                _fill(repeated.add(), item, tz, f"{here}[{index}]")


def vm_from_json(obj: object, tz: ZoneInfo, path: str = "inventory") -> vm_pb2.VmInstanceInventory:
    """Translate one ``VmInstanceInventory`` object; raises TranslationError."""
    vm = vm_pb2.VmInstanceInventory()
    _fill(vm, obj, tz, path)
    return vm


def inventory_from_body(body: object, tz: ZoneInfo) -> vm_pb2.VmInstanceInventory:
    """Translate a success body ``{"inventory": VmInstanceInventory}``; raises TranslationError."""
    if not isinstance(body, dict):
        raise _wrong("(body)", "an object", body)
    if body.get("inventory") is None:
        raise TranslationError("inventory", "missing")
    return vm_from_json(body["inventory"], tz, "inventory")


def _check_tables() -> None:
    """Build every table at import: a proto field without a rule fails at start, not in a call."""
    _table(vm_pb2.VmInstanceInventory.DESCRIPTOR)
    for message in (
        vm_pb2.VmNicInventory,
        vm_pb2.UsedIpInventory,
        vm_pb2.VolumeInventory,
        vm_pb2.VmCdRomInventory,
    ):
        _table(message.DESCRIPTOR)


_check_tables()
