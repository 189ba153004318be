"""The compiled translation (zstack_gateway._wire) against the reference (translate.py + protobuf):
for every image text, the compiled path gives the reference's bytes or leaves the image to it; it
never gives bytes where the reference raises or logs. Then whole simulator bodies in several zones,
through the stream, against the reference. Runs on both paths (ZSTACK_GATEWAY_PURE=1: the pure one,
where the compiled half is skipped)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack_gateway import errors, stream, translate, wire
from zstack_sim import gson
from zstack_sim.data import render_image
from zstack_sim.generate import generate

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]

compiled = pytest.mark.skipif(wire.PATH != "compiled", reason="the compiled translator is not active")


def reference(text: bytes, tz: ZoneInfo) -> tuple[bytes | None, bool]:
    """The reference's bytes (None when it raises) and whether it logged an unreadable date."""
    translate.unreadable_dates.reset()
    try:
        data: bytes | None = wire.reference_bytes(text, tz, "image")
    except errors.GatewayError:
        data = None
    logged = bool(translate.unreadable_dates._seen) or translate.unreadable_dates.unlogged > 0
    translate.unreadable_dates.reset()
    return data, logged


def check(text: bytes, tz: ZoneInfo) -> bytes | None:
    """Compiled vs reference for one image text; the compiled bytes (None: left to the reference)."""
    got = wire._compiled.image(text, wire._days_of(tz)) if wire._compiled is not None else None
    expected, logged = reference(text, tz)
    if got is not None:
        assert expected is not None, f"the compiled path translated what the reference refuses: {text!r}"
        assert not logged, f"the compiled path translated a date the reference logs: {text!r}"
        assert got == expected, text
    # And the path the gateway takes gives the reference's bytes or error.
    if expected is not None:
        assert wire.image_bytes(text, tz, "image") == expected
    else:
        with pytest.raises(errors.GatewayError):
            wire.image_bytes(text, tz, "image")
    return got


# --- generated JSON text: every key, every type, escapes, duplicates, whitespace --------------------

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@st.composite
def gson_dates(draw: st.DrawFn) -> str:
    """Gson's date forms, mostly valid, some odd: DST days, day 0 or 31, hour 0 or 13, minute 60,
    years far out, the three separators before AM/PM, with and without the comma after the year."""
    moment = draw(
        st.one_of(
            st.datetimes(datetime(1890, 1, 1), datetime(2100, 1, 1)),
            # Around the changes of offset (in several zones) of a few years.
            st.builds(
                lambda year, day, minutes: datetime(year, 1, 1) + timedelta(days=day, minutes=minutes),
                st.integers(1990, 2030),
                st.sampled_from([66, 67, 68, 86, 87, 88, 89, 301, 302, 303, 304, 308, 309, 310]),
                st.integers(0, 1439),
            ),
        )
    )
    month = _MONTHS[moment.month - 1]
    day = draw(st.sampled_from([str(moment.day), f"{moment.day:02d}", "0", "31", "30"]))
    hour12 = moment.hour % 12 or 12
    hour = (
        draw(st.sampled_from([str(hour12), f"{hour12:02d}", "0", "13"]))
        if draw(st.booleans())
        else str(hour12)
    )
    minute = (
        draw(st.sampled_from([f"{moment.minute:02d}", "60", "7"]))
        if draw(st.booleans())
        else f"{moment.minute:02d}"
    )
    second = f"{moment.second:02d}"
    comma = draw(st.sampled_from(["", ","]))
    separator = draw(st.sampled_from([" ", "\u202f", "\u00a0", "\t"]))
    half = "PM" if moment.hour >= 12 else "AM"
    year = (
        draw(st.sampled_from([f"{moment.year:04d}", "0000", "9999", "1901"]))
        if draw(st.booleans())
        else f"{moment.year:04d}"
    )
    return f"{month} {day}, {year}{comma} {hour}:{minute}:{second}{separator}{half}"


_odd_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.characters(categories=("Cs",)),  # lone surrogates: only as escapes in the JSON text
        st.sampled_from([*list('"\\/{}[],: \n\t\x00\x1f'), "中", "é", "😀", "\u2028"]),
    ),
    max_size=20,
)
_numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(10**30), 10**30),
    st.sampled_from([2**63, -(2**63) - 1, 10**18, -(10**18), 999_999_999_999_999_999, 0, -0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, -0.0, 1e3, 1.5, 2.0**63, 1e300]),
)
_any_scalar = st.one_of(st.none(), st.booleans(), _numbers, _odd_text, gson_dates())
_any_value = st.recursive(
    _any_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
    max_leaves=6,
)

_IMAGE_KEYS = [fd.json_name for fd in translate.image_pb2.ImageInventory.DESCRIPTOR.fields]
_REF_KEYS = [fd.json_name for fd in translate.image_pb2.BackupStorageRef.DESCRIPTOR.fields]
_KINDS = {
    **{k: v[1] for k, v in translate._REF_FIELDS.items()},
    **{k: v[1] for k, v in translate._IMAGE_FIELDS.items()},
}


def _valid_date(moment: datetime, comma: str, separator: str) -> str:
    hour12 = moment.hour % 12 or 12
    half = "PM" if moment.hour >= 12 else "AM"
    return (
        f"{_MONTHS[moment.month - 1]} {moment.day}, {moment.year}{comma} "
        f"{hour12}:{moment.minute:02d}:{moment.second:02d}{separator}{half}"
    )


_valid_dates = st.builds(
    _valid_date,
    st.datetimes(datetime(1902, 1, 1), datetime(2100, 1, 1)),
    st.sampled_from(["", ","]),
    st.sampled_from([" ", "\u202f", "\u00a0"]),
)
_plain_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from([*list('"\\/{}[],: \n\t'), "中", "é", "😀"]),
    ),
    max_size=20,
)


def _right_value(key: str) -> st.SearchStrategy[Any]:
    """A value of the right type for the key, as ZStack sends it (strings with any characters)."""
    kind = _KINDS.get(key)
    if kind == translate._STR:
        return _plain_text
    if kind == translate._INT:
        return st.integers(-(10**18) + 1, 10**18 - 1)
    if kind == translate._BOOL:
        return st.booleans()
    if kind == translate._DATE:
        return st.one_of(_valid_dates, _valid_dates, st.integers(-(2**50), 2**50))
    return st.none()


def _value_for(key: str) -> st.SearchStrategy[Any]:
    """Mostly the right type for the key, sometimes anything."""
    kind = _KINDS.get(key)
    right: st.SearchStrategy[Any]
    if kind == translate._STR:
        right = _odd_text
    elif kind == translate._INT:
        right = st.one_of(st.integers(-(2**63), 2**63 - 1), _numbers)
    elif kind == translate._BOOL:
        right = st.booleans()
    elif kind == translate._DATE:
        right = st.one_of(
            gson_dates(), st.integers(-(2**50), 2**50), st.integers(-(10**17), 10**17), _numbers
        )
    else:
        right = _any_value
    return st.one_of(right, right, right, st.none(), _any_value)


def _pairs(keys: list[str], refs: st.SearchStrategy[Any] | None) -> st.SearchStrategy[list[tuple[str, Any]]]:
    def value(key: str) -> st.SearchStrategy[tuple[str, Any]]:
        if refs is not None and key == translate._REFS_KEY:
            return st.tuples(st.just(key), st.one_of(refs, refs, refs, st.none(), _any_value))
        return st.tuples(st.just(key), _value_for(key))

    known = st.sampled_from(keys).flatmap(value)
    unknown = st.tuples(st.one_of(_odd_text, st.sampled_from(["uuid_", "Name", "actual_size"])), _any_value)
    # Duplicates: a key drawn more than once keeps its last value, as the json module reads it.
    return st.lists(st.one_of(known, known, known, unknown), max_size=12)


def _friendly_pairs(keys: list[str], refs: st.SearchStrategy[Any] | None) -> st.SearchStrategy[Any]:
    def value(key: str) -> st.SearchStrategy[tuple[str, Any]]:
        if refs is not None and key == translate._REFS_KEY:
            return st.tuples(st.just(key), refs)
        return st.tuples(st.just(key), st.one_of(*[_right_value(key)] * 9, st.none()))

    known = st.sampled_from(keys).flatmap(value)
    unknown = st.tuples(st.sampled_from(["id", "uuid_", "Name", "schema"]), _any_value)
    return st.lists(st.one_of(*[known] * 8, unknown), max_size=24).map(lambda pairs: ("__object__", pairs))


_friendly_refs = st.lists(_friendly_pairs(_REF_KEYS, None), max_size=3)
_friendly_images = _friendly_pairs(_IMAGE_KEYS, _friendly_refs)

_ref_pairs = _pairs(_REF_KEYS, None)
_refs = st.lists(_ref_pairs.map(lambda pairs: ("__object__", pairs)), max_size=3)
_image_pairs = _pairs(_IMAGE_KEYS, _refs)


@st.composite
def json_text(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text, with the escapes and whitespace drawn: pairs lists are objects."""
    space = draw(st.sampled_from(["", " ", "\n  "]))
    if isinstance(value, tuple) and value and value[0] == "__object__":
        # Keys escaped now and then (the compiled path leaves those to the reference).
        items = [
            f"{draw(json_text(k)) if draw(st.integers(0, 15)) == 0 else json.dumps(k)}{space}:{space}"
            f"{draw(json_text(v))}"
            for k, v in value[1]
        ]
        return "{" + space + f",{space}".join(items) + space + "}"
    if isinstance(value, list):
        return "[" + f",{space}".join(draw(json_text(v)) for v in value) + "]"
    if isinstance(value, dict):
        return draw(json_text(("__object__", list(value.items()))))
    if isinstance(value, str):
        mode = draw(st.integers(0, 3))
        if mode == 0 and not any("\ud800" <= c <= "\udfff" for c in value):
            return json.dumps(value, ensure_ascii=False)
        if mode == 2:  # every character escaped
            return '"' + "".join("".join(f"\\u{unit:04x}" for unit in _utf16(c)) for c in value) + '"'
        text = json.dumps(value)
        return text.replace("/", "\\/") if mode == 3 else text
    return json.dumps(value)


def _utf16(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data(), pairs=_image_pairs, zone=st.sampled_from(ZONES))
def test_compiled_bytes_are_the_references_for_any_image_text(data, pairs, zone):
    text = data.draw(json_text(("__object__", pairs))).encode("utf-8", "surrogatepass")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:  # the body check refuses these before any image is read
        return
    check(text, ZoneInfo(zone))


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), image=_friendly_images, zone=st.sampled_from(ZONES))
def test_compiled_bytes_are_the_references_for_images_as_zstack_sends_them(data, image, zone):
    """Right types, every character, escapes, duplicate keys, dates over two centuries: mostly compiled."""
    check(data.draw(json_text(image)).encode("utf-8"), ZoneInfo(zone))


@pytest.mark.parametrize(
    "text",
    [
        b"{}",
        b'{"uuid": null}',
        b'{"uuid": "a", "uuid": null}',
        b'{"uuid": null, "uuid": "b"}',
        b'{"backupStorageRefs": [{"id": 1}], "backupStorageRefs": null}',
        b'{"backupStorageRefs": [{"id": 1}], "backupStorageRefs": [{"id": 2}]}',
        b'{"backupStorageRefs": []}',
        b'{"size": 9223372036854775807, "actualSize": -9223372036854775808}',
        b'{"size": 999999999999999999, "actualSize": -999999999999999999}',
        b'{"size": 9223372036854775808}',
        b'{"size": 1.0}',
        b'{"size": 1e3}',
        b'{"size": -0}',
        b'{"size": true}',
        b'{"name": 5}',
        b'{"system": 1}',
        b'{"name": "\\ud800"}',
        b'{"name": "\\ud83d\\ude00 \\u00e9 \\/ \\" \\\\ \\b\\f\\n\\r\\t \\u0000"}',
        b'{"na\\u006de": "escaped key"}',
        b'{"createDate": 0, "lastOpDate": -1}',
        b'{"createDate": 253402300799999, "lastOpDate": 253402300800000}',
        b'{"createDate": "Jan 1, 1970 12:00:00 AM"}',
        b'{"createDate": "Feb 29, 2024 11:59:59 PM", "lastOpDate": "Feb 29, 2023 11:59:59 PM"}',
        b'{"createDate": "Mar 10, 2024 2:30:00 AM"}',
        b'{"createDate": "Nov 3, 2024, 1:30:00\xe2\x80\xafAM"}',
        b'{"createDate": "Jul 22, 2022 11:54:07\xc2\xa0PM"}',
        b'{"createDate": "Jul 22, 2022 11:54:07 PM "}',
        b'{"createDate": "Jul 22, 1901 11:54:07 PM"}',
        b'{"createDate": "Dec 31, 9999 11:59:59 PM"}',
        b'{"createDate": true}',
        b'{"createDate": 1.5}',
        b'{"extra": [[[[{"a": "]}"}]]]], "uuid": "u"}',
        b'{"extra": {"backupStorageRefs": 5}, "uuid": "u"}',
        b'  {"uuid" : "u" }  ',
        b"[]",
        b'"uuid"',
        b'{"uuid": "u"',
        b'{"uuid" "u"}',
    ],
)
@pytest.mark.parametrize("zone", ZONES)
def test_compiled_bytes_are_the_references_for_edge_cases(text, zone):
    check(text, ZoneInfo(zone))


# --- what ZStack sends: the simulator's bodies, whole, through the stream ----------------------------


def _body(zone: str, count: int) -> bytes:
    tz = ZoneInfo(zone)
    data = generate(count)
    parts = [gson.dumps(render_image(image, tz)) for image in data.images.values()]
    return b'{"inventories":[' + b",".join(parts) + b"]}"


@pytest.mark.parametrize("zone", ZONES)
def test_simulator_bodies_stream_as_the_reference_translates_them(zone):
    tz = ZoneInfo(zone)
    body = _body(zone, 2000)
    items = translate.inventory_items(json.loads(body))
    expected = [translate.image_from_json(item, tz).SerializeToString() for item in items]
    got = [
        image.SerializeToString()
        for chunk in stream.ImageStream(bytearray(body), tz).messages()
        for image in svc.GetCandidateIsoResponse.FromString(chunk.data).inventories
    ]
    assert got == expected


@compiled
@pytest.mark.parametrize("zone", ZONES)
def test_the_compiled_path_takes_what_zstack_normally_sends(zone):
    """Images on days without a change of offset never fall back: the compiled path is the one in use."""
    tz = ZoneInfo(zone)

    class Envelope(msgspec.Struct):
        inventories: list[msgspec.Raw]

    texts = msgspec.json.decode(_body(zone, 500), type=Envelope).inventories
    fallbacks = sum(check(bytes(text), tz) is None for text in texts)
    assert fallbacks <= len(texts) // 10, f"{fallbacks} of {len(texts)} images left to the reference"
    if zone in ("UTC", "Asia/Shanghai", "Asia/Kolkata"):
        assert fallbacks == 0


@pytest.mark.parametrize("zone", ZONES)
def test_day_offsets_are_the_references_at_every_quarter_hour(zone):
    """A day's cached offset is what translate.java_offset gives every time of that day."""
    tz = ZoneInfo(zone)
    for year, month, day in [
        (2024, 3, 10),
        (2024, 3, 31),
        (2024, 4, 7),
        (2024, 10, 6),
        (2024, 11, 3),
        (2023, 7, 1),
        (1902, 1, 1),
        (2099, 12, 31),
    ]:
        offset = wire.day_offset(tz, year, month, day)
        if offset is None:
            continue
        for quarter in range(96):
            local = datetime(year, month, day) + timedelta(minutes=15 * quarter)
            assert translate.java_offset(local, tz) == timedelta(seconds=offset), local


def test_the_gateway_says_at_start_which_path_it_runs(gateway_process):
    """The start log line names the translation path (ZSTACK_GATEWAY_PURE=1 forces the pure one)."""
    forced = os.environ.get("ZSTACK_GATEWAY_PURE", "") not in ("", "0")
    if forced:
        assert wire.PATH == "pure"
    gw = gateway_process()
    assert _logged(gw, f"translation: {wire.PATH} path; event loop: ")
    gw = gateway_process(env={"ZSTACK_GATEWAY_PURE": "1"})
    assert _logged(gw, "translation: pure path; event loop: ")


def _logged(gw, text: str, wait: float = 15.0) -> bool:
    """Whether ``text`` shows in the gateway's log within ``wait`` seconds: its log lines reach the
    file through the stderr pump (telemetry/core_logs.py), possibly after the ready line."""
    end = time.monotonic() + wait
    while text not in gw.log():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


# --- the up-front check of a large body, in slices ----------------------------------------------------


def _outcome(make):
    try:
        return [chunk.data for chunk in make().messages()]
    except errors.GatewayError as exc:
        return (type(exc).__name__, str(exc))


@pytest.fixture
def small_slices():
    """Slices of a few hundred bytes, so that small bodies are checked the sliced way."""
    saved = stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES
    stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES = 1, 300
    yield
    stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES = saved


_SMALL_BODY = _body("Asia/Shanghai", 12)


def _sliced(body: bytes):
    async def run():
        return await stream.open_stream(bytearray(body), ZoneInfo("Asia/Shanghai"))

    return asyncio.run(run())


@compiled
@pytest.mark.parametrize(
    "body",
    [
        _SMALL_BODY,
        b' \n{ "total" : 12 , "inventories" : ' + _SMALL_BODY[15:-1] + b', "schema": {"a": [1, 2]} }\n',
        _SMALL_BODY[:-1] + b', "inventories": []}',
        _SMALL_BODY[:-1] + b', "inventorie\\u0073": []}',
        b'{"inventories": []}',
        b'{"inventories": [ ]}',
        b'{"inventories": [{}, {}, 5, "x", null, [1]]}',
        b'{"inventories": {}}',
        b'{"inventories": [{}],}',
        b'{"inventories": [{},]}',
        b'{"inventories": [{} {}]}',
        b'{"inventories": [{}]} x',
        b'{"inventories": [{"name": "\xff"}]}',
        b'{"inventories": [{"name": "\\ud800"}]}',
        b'{"inventories": [' + b"[" * 1200 + b"]" * 1200 + b"]}",
        b'{"x": "' + b"a" * 70000 + b'", "inventories": [{}]}',
        b'["inventories"]',
        _SMALL_BODY[:-2] + b",]}",
        _SMALL_BODY[:-2] + b", ]}",
        _SMALL_BODY[:-2] + b"," + b" " * 100 + b"]}",
        b'{"inventories": [' + b",".join([b'{"name": "' + b"a" * 400 + b'},{\\"q\\": 1}"}'] * 5) + b"]}",
        b'{"inventories": [' + b",".join([b'{"name": "' + b"a" * 400 + b'"},{"q": [1, 2]}'] * 5) + b"]}",
        b'{"inventories": ['
        + b",".join([b'{"name": "' + b"a" * 400 + b'"}'] * 5)
        + b'], "inventories": [{}]}',
        b'{"inventories": ['
        + b",".join([b'{"name": "' + b"a" * 400 + b'"}'] * 5)
        + b'], "inventorie\\u0073": [{}]}',
        b'{"inventories": [' + b",\n  ".join([b'{"name": "' + b"a" * 400 + b'"}'] * 5) + b"]}",
    ],
)
def test_the_sliced_check_reads_a_body_as_the_whole_check_does(body, small_slices):
    tz = ZoneInfo("Asia/Shanghai")
    assert _outcome(lambda: _sliced(body)) == _outcome(lambda: stream.ImageStream(bytearray(body), tz))


@compiled
def test_the_sliced_check_passes_what_zstack_sends(small_slices):
    assert asyncio.run(stream._sliced_check(bytearray(_SMALL_BODY))) is not None


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(0, len(_SMALL_BODY) - 1),
    action=st.sampled_from(["delete", "insert", "replace"]),
    byte=st.sampled_from(list(b'{}[],:" \\0a-.e\xff')),
)
def test_the_sliced_check_reads_a_damaged_body_as_the_whole_check_does(position, action, byte):
    body = bytearray(_SMALL_BODY)
    if action == "delete":
        del body[position]
    elif action == "insert":
        body.insert(position, byte)
    else:
        body[position] = byte
    saved = stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES
    stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES = 1, 300
    try:
        sliced = _outcome(lambda: _sliced(bytes(body)))
    finally:
        stream.SLICED_CHECK_BYTES, stream.CHECK_SLICE_BYTES = saved
    assert sliced == _outcome(lambda: stream.ImageStream(bytearray(body), ZoneInfo("Asia/Shanghai")))
