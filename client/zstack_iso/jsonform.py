"""message_to_dict: a message as ZStack writes it in JSON.

protobuf's JSON mapping writes 64-bit integers as strings (``"size": "4617089843"``), because
JavaScript numbers lose precision above 2**53. ZStack writes them as numbers (``"size": 4617089843``),
and so does this function; Python's json reads and writes them exactly. Everything else is
protobuf's mapping: ZStack's key names (the protos' ``json_name``), absent fields left out, and dates
(``google.protobuf.Timestamp``) as RFC 3339 in UTC, e.g. ``"2024-03-05T07:08:09Z"``. ZStack itself
writes dates in the management node's zone without naming it (``"Mar 5, 2024 3:08:09 PM"``); the
gateway has already turned them into instants, and RFC 3339 says which instant without a zone to
guess.
"""

from __future__ import annotations

from typing import Any, Final, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["message_to_dict"]

_INT64: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Well-known wrappers whose JSON form is the bare value, a string for these two.
_INT64_WRAPPERS: Final = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


def message_to_dict(message: Message) -> dict[str, Any]:
    """``message`` as a JSON-ready dict with ZStack's key names and 64-bit integers as numbers."""
    data = json_format.MessageToDict(message)
    _int64_as_numbers(cast(Descriptor, message.DESCRIPTOR), data)
    return data


def _int64_as_numbers(descriptor: Descriptor, data: dict[str, Any]) -> None:
    """Rewrites, in place, the 64-bit integers of ``data`` (MessageToDict of a ``descriptor``)."""
    for field in descriptor.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        if field.type in _INT64:
            data[field.json_name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                _map_values(sub, value)
            elif isinstance(value, list):
                data[field.json_name] = [_convert(sub, item) for item in value]
            else:
                data[field.json_name] = _convert(sub, value)


def _map_values(entry: Descriptor, mapping: dict[str, Any]) -> None:
    value_field = entry.fields_by_name["value"]
    for key, value in mapping.items():
        if value_field.type in _INT64:
            mapping[key] = int(value)
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE and value_field.message_type is not None:
            mapping[key] = _convert(value_field.message_type, value)


def _convert(descriptor: Descriptor, value: Any) -> Any:
    if descriptor.full_name in _INT64_WRAPPERS:
        return int(value)
    if descriptor.full_name.startswith("google.protobuf."):
        return value  # Timestamp, Duration, Struct ...: protobuf's JSON forms
    if isinstance(value, dict):
        _int64_as_numbers(descriptor, value)
    return value
