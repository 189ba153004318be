"""Tests of zstack_gateway.translate (ZStack JSON -> protobuf). The module is pure: call it directly."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from examples import SEED_BODY
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zstack.v1 import error_pb2, image_pb2
from zstack_gateway import error_json, translate
from zstack_gateway.error_json import error_code_from_json
from zstack_gateway.errors import GatewayError
from zstack_gateway.translate import (
    TranslationError,
    backup_storage_ref_from_json,
    image_from_json,
    inventories_from_body,
    parse_zstack_date,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
LOGGER = "zstack_gateway.translate"

# The contract's assembled example (zstack-rest-contract.md §3.6), as raw JSON text.
CONTRACT_BODY = (
    '{"inventories":[{"uuid":"52a6b220d94c4b369b3520c76c90036a","name":"CentOS-7-x86_64.iso",'
    '"state":"Enabled","status":"Ready","size":4588568576,"actualSize":4588568576,"md5Sum":"...",'
    '"url":"http://10.0.0.5/iso/CentOS-7.iso","mediaType":"ISO","guestOsType":"Linux","type":"zstack",'
    '"platform":"Linux","architecture":"x86_64","format":"iso","system":false,"virtio":true,'
    '"createDate":"Jul 22, 2022 11:54:07 AM","lastOpDate":"Jul 22, 2022 11:54:08 AM",'
    '"backupStorageRefs":[{"id":1,"imageUuid":"52a6b220d94c4b369b3520c76c90036a",'
    '"backupStorageUuid":"f0fe23c070ec4e42b31d176cb007f640",'
    '"installPath":"zstore://52a6b220d94c4b369b3520c76c90036a/a5dd7c06...","status":"Ready",'
    '"createDate":"Jul 22, 2022 11:54:07 AM","lastOpDate":"Jul 22, 2022 11:54:08 AM"}]}]}'
)


def full_ref(index: int = 1) -> dict[str, Any]:
    """A backup storage ref with every field ZStack can send."""
    return {
        "id": index,
        "imageUuid": "52a6b220d94c4b369b3520c76c90036a",
        "backupStorageUuid": f"f0fe23c070ec4e42b31d176cb007f64{index}",
        "installPath": f"zstore://52a6b220d94c4b369b3520c76c90036a/{index}",
        "status": "Ready",
        "exportMd5Sum": "9e107d9d372bb6826bd81d3542a419d6",
        "exportUrl": f"http://10.0.0.9/export/{index}.iso",
        "createDate": "Jul 22, 2022 11:54:07 AM",
        "lastOpDate": "Jul 22, 2022 11:54:08 AM",
    }


def full_image() -> dict[str, Any]:
    """An image with every field ZStack can send, and two refs."""
    return {
        "uuid": "52a6b220d94c4b369b3520c76c90036a",
        "name": "CentOS-7-x86_64.iso",
        "description": "installer DVD",
        "state": "Enabled",
        "status": "Ready",
        "size": 4588568576,
        "actualSize": 4588568570,
        "md5Sum": "d41d8cd98f00b204e9800998ecf8427e",
        "url": "http://10.0.0.5/iso/CentOS-7.iso",
        "mediaType": "ISO",
        "guestOsType": "CentOS 7",
        "type": "zstack",
        "platform": "Linux",
        "architecture": "x86_64",
        "format": "iso",
        "system": False,
        "virtio": True,
        "createDate": "Jan 6, 2017 3:51:16 AM",
        "lastOpDate": "Jul 22, 2022 11:54:08 AM",
        "backupStorageRefs": [full_ref(1), full_ref(2)],
    }


def rfc3339(stamp: Any) -> str:
    return str(stamp.ToJsonString())


@pytest.fixture
def fresh_date_log() -> Iterator[translate._UnreadableDates]:
    """The process-wide memory of logged bad dates, emptied before and after the test."""
    translate.unreadable_dates.reset()
    yield translate.unreadable_dates
    translate.unreadable_dates.reset()


# --- images -------------------------------------------------------------------------------------


def test_seed_page_example() -> None:
    images = inventories_from_body(json.loads(SEED_BODY), SHANGHAI)
    assert len(images) == 1
    image = images[0]
    assert image.uuid == "cb2c34a46a753c5ab95807fabbae56af"
    assert image.name == "TinyLinux"
    assert image.url == "http://192.168.1.20/share/images/tinylinux.qcow2"
    assert image.media_type == "RootVolumeTemplate"
    assert (image.platform, image.format) == ("Linux", "qcow2")
    for absent in (
        "description",
        "state",
        "status",
        "size",
        "actual_size",
        "system",
        "virtio",
        "create_date",
    ):
        assert not image.HasField(absent), absent
    [ref] = image.backup_storage_refs
    assert ref.HasField("id") and ref.id == 0
    assert ref.backup_storage_uuid == "217396177c143e49ad21dd5679e28a61"
    assert ref.install_path == "ceph://zs-images/f0b149e053b34c7eb7fe694b182ebffd"
    assert ref.status == "Ready"
    assert not ref.HasField("export_url") and not ref.HasField("create_date")


def test_contract_example() -> None:
    [image] = inventories_from_body(json.loads(CONTRACT_BODY), SHANGHAI)
    assert image.size == image.actual_size == 4588568576
    assert image.system is False and image.HasField("system")
    assert image.virtio is True
    assert rfc3339(image.create_date) == "2022-07-22T03:54:07Z"
    assert rfc3339(image.last_op_date) == "2022-07-22T03:54:08Z"
    [ref] = image.backup_storage_refs
    assert ref.id == 1
    assert rfc3339(ref.create_date) == "2022-07-22T03:54:07Z"


def test_full_image_sets_every_field() -> None:
    source = full_image()
    image = image_from_json(source, SHANGHAI)
    # Every field as ZStack sent it, but int64 as a string (proto3 JSON) and dates in RFC 3339 UTC.
    expected = {k: v for k, v in source.items() if k != "backupStorageRefs"} | {
        "size": "4588568576",
        "actualSize": "4588568570",
        "createDate": "2017-01-05T19:51:16Z",
        "lastOpDate": "2022-07-22T03:54:08Z",
    }
    as_json = json_format.MessageToDict(image)
    refs = as_json.pop("backupStorageRefs")
    assert as_json == expected
    assert refs[1] == {
        "id": "2",
        "imageUuid": "52a6b220d94c4b369b3520c76c90036a",
        "backupStorageUuid": "f0fe23c070ec4e42b31d176cb007f642",
        "installPath": "zstore://52a6b220d94c4b369b3520c76c90036a/2",
        "status": "Ready",
        "exportMd5Sum": "9e107d9d372bb6826bd81d3542a419d6",
        "exportUrl": "http://10.0.0.9/export/2.iso",
        "createDate": "2022-07-22T03:54:07Z",
        "lastOpDate": "2022-07-22T03:54:08Z",
    }


@pytest.mark.parametrize(
    "message", [image_pb2.ImageInventory, image_pb2.BackupStorageRef], ids=lambda m: m.__name__
)
def test_every_proto_field_is_translated(message: Any) -> None:
    """The field table follows the protos: a JSON object holding every field's JSON name fills them all."""
    sample = {"string": "x", "int64": 7, "bool": True}
    image = full_image()
    obj: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        if fd.message_type is not None:
            obj[fd.json_name] = image[fd.json_name]
        else:
            obj[fd.json_name] = sample[
                {fd.TYPE_STRING: "string", fd.TYPE_INT64: "int64", fd.TYPE_BOOL: "bool"}[fd.type]
            ]
    if message is image_pb2.ImageInventory:
        result: Any = image_from_json(obj, SHANGHAI)
    else:
        result = backup_storage_ref_from_json(obj, SHANGHAI, "ref")
    for fd in message.DESCRIPTOR.fields:
        if fd.is_repeated:
            assert len(getattr(result, fd.name)) == 2
        else:
            assert result.HasField(fd.name), fd.name


def test_unknown_fields_are_ignored() -> None:
    obj = full_image()
    obj.update(systemTags=["a"], somethingNew={"x": [1, 2]}, schema={"inventories[0]": "x"}, Name=1)
    obj["backupStorageRefs"][0]["futureField"] = [None, True]
    assert image_from_json(obj, SHANGHAI) == image_from_json(full_image(), SHANGHAI)
    body = {"inventories": [obj], "schema": {"a": "b"}, "success": True}
    assert inventories_from_body(body, SHANGHAI) == [image_from_json(full_image(), SHANGHAI)]


def test_nulls_and_absent_fields_stay_unset() -> None:
    nulls = {key: None for key in full_image()}
    image = image_from_json(nulls, SHANGHAI)
    assert image == image_pb2.ImageInventory()
    assert image_from_json({}, SHANGHAI) == image_pb2.ImageInventory()
    ref = backup_storage_ref_from_json({key: None for key in full_ref()}, SHANGHAI, "ref")
    assert ref == image_pb2.BackupStorageRef()
    assert len(image_from_json({"backupStorageRefs": []}, SHANGHAI).backup_storage_refs) == 0


def test_zero_values_are_present() -> None:
    """Presence keeps ZStack's "" / 0 / false apart from an absent field."""
    image = image_from_json({"name": "", "size": 0, "system": False, "virtio": False}, SHANGHAI)
    for name in ("name", "size", "system", "virtio"):
        assert image.HasField(name), name
    assert not image.HasField("description")


def test_integral_floats_are_integers() -> None:
    """The English docs print integers as 0.0."""
    image = image_from_json(
        {"size": 4588568576.0, "actualSize": -0.0, "backupStorageRefs": [{"id": 0.0}]}, UTC_ZONE
    )
    assert image.size == 4588568576 and image.HasField("actual_size") and image.actual_size == 0
    assert image.backup_storage_refs[0].HasField("id")


def test_int64_limits() -> None:
    image = image_from_json({"size": 2**63 - 1, "actualSize": -(2**63)}, UTC_ZONE)
    assert (image.size, image.actual_size) == (2**63 - 1, -(2**63))


def test_gson_escapes_from_raw_json() -> None:
    raw = (
        r'{"inventories":[{"name":"\u003cwin\u003e \u0027x\u0027","url":'
        r'"http://10.0.0.5/get?file\u003dwin.iso\u0026token\u003dab\u003d\u003d","description":"镜像"}]}'
    )
    [image] = inventories_from_body(json.loads(raw), SHANGHAI)
    assert image.url == "http://10.0.0.5/get?file=win.iso&token=ab=="
    assert image.name == "<win> 'x'"
    assert image.description == "镜像"


def test_many_images_keep_order() -> None:
    body = {"inventories": [dict(full_image(), uuid=f"{i:032x}") for i in range(10_000)]}
    images = inventories_from_body(body, SHANGHAI)
    assert [image.uuid for image in images[:3]] == [f"{i:032x}" for i in range(3)]
    assert len(images) == 10_000 and images[-1].uuid == f"{9999:032x}"
    assert all(len(image.backup_storage_refs) == 2 for image in images)


def test_empty_inventories() -> None:
    assert inventories_from_body({"inventories": []}, SHANGHAI) == []


# --- wrong types ----------------------------------------------------------------------------------

WRONG_IMAGE_VALUES = [
    ("uuid", 123, "expected a string, got int"),
    ("name", True, "expected a string, got bool"),
    ("description", ["a"], "expected a string, got list"),
    ("md5Sum", {"a": 1}, "expected a string, got dict"),
    ("url", 1.5, "expected a string, got float"),
    ("size", "4588568576", "expected an integer, got str"),
    ("size", True, "expected an integer, got bool"),
    ("size", 1.5, "expected an integer, got float 1.5"),
    ("size", float("inf"), "expected an integer, got float inf"),
    ("size", float("nan"), "expected an integer, got float nan"),
    ("actualSize", 2**63, "integer out of int64 range"),
    ("actualSize", -(2**63) - 1, "integer out of int64 range"),
    ("actualSize", 1e19, "integer out of int64 range"),
    ("actualSize", [], "expected an integer, got list"),
    ("system", 0, "expected a boolean, got int"),
    ("system", "false", "expected a boolean, got str"),
    ("virtio", 1.0, "expected a boolean, got float"),
    ("backupStorageRefs", "none", "expected a list, got str"),
    ("backupStorageRefs", {"id": 1}, "expected a list, got dict"),
]


@pytest.mark.parametrize(("key", "value", "reason"), WRONG_IMAGE_VALUES)
def test_wrong_image_field_type_names_the_field(key: str, value: object, reason: str) -> None:
    images = [full_image() for _ in range(4)]
    images[3][key] = value
    with pytest.raises(TranslationError) as caught:
        inventories_from_body({"inventories": images}, SHANGHAI)
    assert caught.value.field == f"inventories[3].{key}"
    assert caught.value.problem.startswith(reason)
    assert str(caught.value) == f"invalid ZStack response: inventories[3].{key}: {caught.value.problem}"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("id", "1", "expected an integer, got str"),
        ("id", False, "expected an integer, got bool"),
        ("imageUuid", 5, "expected a string, got int"),
        ("installPath", None, None),
        ("exportUrl", [], "expected a string, got list"),
        ("status", {}, "expected a string, got dict"),
    ],
)
def test_wrong_ref_field_type_names_the_field(key: str, value: object, reason: str | None) -> None:
    images = [full_image() for _ in range(4)]
    images[3]["backupStorageRefs"][1][key] = value
    body = {"inventories": images}
    if reason is None:  # null is fine: the field stays unset
        assert not inventories_from_body(body, SHANGHAI)[3].backup_storage_refs[1].HasField("install_path")
        return
    with pytest.raises(TranslationError) as caught:
        inventories_from_body(body, SHANGHAI)
    assert caught.value.field == f"inventories[3].backupStorageRefs[1].{key}"
    assert caught.value.problem == reason


def test_exact_message_of_the_brief() -> None:
    images = [full_image() for _ in range(4)]
    images[3]["size"] = "big"
    with pytest.raises(
        TranslationError,
        match=r"^invalid ZStack response: inventories\[3\]\.size: expected an integer, got str$",
    ):
        inventories_from_body({"inventories": images}, SHANGHAI)


@pytest.mark.parametrize("ref", [None, 1, "x", [], True])
def test_ref_must_be_an_object(ref: object) -> None:
    obj = full_image()
    obj["backupStorageRefs"] = [full_ref(), ref]
    with pytest.raises(TranslationError) as caught:
        image_from_json(obj, SHANGHAI, "inventories[0]")
    assert caught.value.field == "inventories[0].backupStorageRefs[1]"
    assert caught.value.problem.startswith("expected an object, got ")


def test_lone_surrogate_string_names_the_field() -> None:
    body = json.loads('{"inventories":[{"name":"ok"},{"backupStorageRefs":[{"status":"a\\ud800b"}]}]}')
    with pytest.raises(TranslationError) as caught:
        inventories_from_body(body, SHANGHAI)
    assert caught.value.field == "inventories[1].backupStorageRefs[0].status"
    assert "surrogate" in caught.value.problem


def test_error_text_never_holds_a_huge_value() -> None:
    huge = "x" * 1_000_000
    with pytest.raises(TranslationError) as caught:
        image_from_json({"size": huge}, SHANGHAI)
    assert len(str(caught.value)) < 200
    with pytest.raises(TranslationError) as caught:
        image_from_json({"size": 10**4000}, SHANGHAI)
    assert len(str(caught.value)) < 200


def test_translation_error_is_a_gateway_error_and_pickles() -> None:
    error = TranslationError("inventories[3].size", "expected an integer, got str")
    assert isinstance(error, GatewayError)
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "ZSTACK_BAD_RESPONSE")
    copy_ = pickle.loads(pickle.dumps(error))
    assert (copy_.field, copy_.problem, str(copy_)) == (error.field, error.problem, str(error))


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ([], "(body)", "expected an object, got list"),
        (None, "(body)", "expected an object, got null"),
        ("text", "(body)", "expected an object, got str"),
        ({}, "inventories", "missing"),
        ({"error": {"code": "SYS.1000"}}, "inventories", "missing"),
        ({"inventories": None}, "inventories", "expected a list, got null"),
        ({"inventories": {}}, "inventories", "expected a list, got dict"),
        ({"inventories": "[]"}, "inventories", "expected a list, got str"),
        ({"inventories": [{}, 1]}, "inventories[1]", "expected an object, got int"),
        ({"inventories": [None]}, "inventories[0]", "expected an object, got null"),
    ],
)
def test_envelope_errors(body: object, field: str, reason: str) -> None:
    with pytest.raises(TranslationError) as caught:
        inventories_from_body(body, SHANGHAI)
    assert (caught.value.field, caught.value.problem) == (field, reason)


def test_image_from_json_default_path() -> None:
    with pytest.raises(TranslationError) as caught:
        image_from_json([], SHANGHAI)
    assert caught.value.field == "image"


# --- dates --------------------------------------------------------------------------------------

DATE_CASES = [
    # (raw value, zone, expected RFC 3339 instant)
    ("Jul 22, 2022 11:54:07 AM", SHANGHAI, "2022-07-22T03:54:07Z"),
    ("Jan 6, 2017 3:51:16 AM", SHANGHAI, "2017-01-05T19:51:16Z"),
    ("Jul 22, 2022, 11:54:07 AM", SHANGHAI, "2022-07-22T03:54:07Z"),
    ("Jul 22, 2022, 11:54:07\u202fPM", SHANGHAI, "2022-07-22T15:54:07Z"),
    ("Jul 22, 2022 11:54:07\u00a0PM", SHANGHAI, "2022-07-22T15:54:07Z"),
    ("Jul 22, 2022 11:54:07 AM", UTC_ZONE, "2022-07-22T11:54:07Z"),
    ("Jan 6, 2017, 3:51:16\u202fPM", UTC_ZONE, "2017-01-06T15:51:16Z"),
    ("Jan 1, 2020 12:00:00 AM", UTC_ZONE, "2020-01-01T00:00:00Z"),
    ("Jan 1, 2020 12:30:00 PM", UTC_ZONE, "2020-01-01T12:30:00Z"),
    ("Dec 31, 1969 11:59:59 PM", UTC_ZONE, "1969-12-31T23:59:59Z"),
    ("Feb 29, 2024 1:02:03 AM", UTC_ZONE, "2024-02-29T01:02:03Z"),
    # New York: summer (EDT, -4) and winter (EST, -5).
    ("Jul 22, 2022 11:54:07 AM", NEW_YORK, "2022-07-22T15:54:07Z"),
    ("Jan 6, 2017, 3:51:16\u202fPM", NEW_YORK, "2017-01-06T20:51:16Z"),
    # A time that does not exist (spring forward) and one that exists twice (fall back): Java reads
    # both in standard time (EST, -5), as ZStack does.
    ("Mar 13, 2022 2:30:00 AM", NEW_YORK, "2022-03-13T07:30:00Z"),
    ("Nov 6, 2022 1:30:00 AM", NEW_YORK, "2022-11-06T06:30:00Z"),
    # Epoch milliseconds: the zone does not matter.
    (1658462047000, SHANGHAI, "2022-07-22T03:54:07Z"),
    (1658462047123, NEW_YORK, "2022-07-22T03:54:07.123Z"),
    (1658462047000.0, UTC_ZONE, "2022-07-22T03:54:07Z"),
    (-1, UTC_ZONE, "1969-12-31T23:59:59.999Z"),
    (0, SHANGHAI, "1970-01-01T00:00:00Z"),
]


@pytest.mark.parametrize(("raw", "tz", "expected"), DATE_CASES)
def test_parse_zstack_date(raw: object, tz: ZoneInfo, expected: str) -> None:
    stamp = parse_zstack_date(raw, tz)
    assert stamp is not None
    assert rfc3339(stamp) == expected
    # A second reading (from the cache) agrees.
    again = parse_zstack_date(raw, tz)
    assert again is not None and rfc3339(again) == expected


UNREADABLE_DATES: list[object] = [
    None,
    "",
    "garbage",
    "Jul 22, 2022 11:54:07",  # no AM/PM
    "Jul 22 2022 11:54:07 AM",  # no comma after the day
    "jul 22, 2022 11:54:07 AM",
    "July 22, 2022 11:54:07 AM",
    "Jul 32, 2022 11:54:07 AM",
    "Feb 29, 2021 11:54:07 AM",
    "Jul 22, 2022 13:54:07 PM",
    "Jul 22, 2022 0:54:07 AM",
    "Jul 22, 2022 11:60:07 AM",
    "Jul 22, 2022 11:54:07 AM ",
    "Jul 22, 2022  11:54:07 AM",
    "Jul 22, 0000 11:54:07 AM",
    "Jul 22, 2022 11:54:07\u2009AM",  # a thin space is not one of the accepted spaces
    "Jul ２2, 2022 11:54:07 AM",  # a fullwidth digit
    "2022-07-22T03:54:07Z",
    "1658462047000",
    "Jul 22, 2022 11:54:07 AM" * 100,
    1658462047000.5,
    float("nan"),
    float("inf"),
    10**30,
    -(10**30),
    True,
    False,
    [],
    {"seconds": 1},
]


@pytest.mark.parametrize("raw", UNREADABLE_DATES, ids=repr)
@pytest.mark.parametrize("tz", [SHANGHAI, UTC_ZONE, NEW_YORK], ids=str)
def test_unreadable_dates_give_none(raw: object, tz: ZoneInfo) -> None:
    assert parse_zstack_date(raw, tz) is None


def test_year_one_in_an_east_zone_is_outside_timestamp_range() -> None:
    assert parse_zstack_date("Jan 1, 0001 12:00:00 AM", SHANGHAI) is None
    stamp = parse_zstack_date("Dec 31, 9999 11:59:59 PM", UTC_ZONE)
    assert stamp is not None and rfc3339(stamp) == "9999-12-31T23:59:59Z"


def test_date_cache_keys_on_the_zone() -> None:
    raw = "Jul 22, 2022 11:54:07 AM"
    readings = {rfc3339(parse_zstack_date(raw, tz)) for tz in (SHANGHAI, UTC_ZONE, NEW_YORK, SHANGHAI)}
    assert readings == {"2022-07-22T03:54:07Z", "2022-07-22T11:54:07Z", "2022-07-22T15:54:07Z"}


def test_date_cache_is_bounded() -> None:
    for minute in range(translate._DATE_CACHE_SIZE + 10):
        stamp = parse_zstack_date(f"Jan 1, 2020 {minute // 60 % 12 + 1}:{minute % 60:02d}:00 AM", UTC_ZONE)
        assert stamp is not None
    assert len(translate._date_cache) <= translate._DATE_CACHE_SIZE


@pytest.mark.parametrize("tz", [SHANGHAI, UTC_ZONE, NEW_YORK], ids=str)
def test_dates_in_images_follow_the_zone(tz: ZoneInfo) -> None:
    obj = {"createDate": "Jul 22, 2022 11:54:07 AM", "backupStorageRefs": [{"lastOpDate": 1658462047000}]}
    image = image_from_json(obj, tz)
    expected = datetime(2022, 7, 22, 11, 54, 7, tzinfo=tz).astimezone(UTC)
    assert image.create_date.ToDatetime(tzinfo=UTC) == expected
    assert rfc3339(image.backup_storage_refs[0].last_op_date) == "2022-07-22T03:54:07Z"


@pytest.mark.parametrize("raw", ["not a date", 1.5, [1], {"a": 1}, True, "Feb 30, 2022 1:00:00 AM"], ids=repr)
def test_bad_date_in_an_image_is_unset_and_logged(
    raw: object, caplog: pytest.LogCaptureFixture, fresh_date_log: Any
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    obj = full_image()
    obj["backupStorageRefs"][1]["createDate"] = raw
    image = inventories_from_body({"inventories": [full_image(), obj]}, SHANGHAI)[1]
    ref = image.backup_storage_refs[1]
    assert not ref.HasField("create_date")
    assert ref.HasField("last_op_date") and image.HasField("create_date")
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "inventories[1].backupStorageRefs[1].createDate" in records[0].getMessage()


def test_bad_date_is_logged_once_per_distinct_value(
    caplog: pytest.LogCaptureFixture, fresh_date_log: Any
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    images = [{"createDate": "soon", "lastOpDate": "soon"} for _ in range(50)]
    images.append({"createDate": "later", "lastOpDate": "soon"})
    inventories_from_body({"inventories": images}, SHANGHAI)
    inventories_from_body({"inventories": images}, UTC_ZONE)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2
    assert "'soon'" in messages[0] and "inventories[0].createDate" in messages[0]
    assert "'later'" in messages[1]


def test_logged_bad_date_is_cut_short(caplog: pytest.LogCaptureFixture, fresh_date_log: Any) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    image_from_json({"createDate": "y" * 100_000}, SHANGHAI)
    image_from_json({"createDate": list(range(100_000))}, SHANGHAI)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2 and all(len(m) < 200 for m in messages)


def test_bad_date_memory_is_bounded(caplog: pytest.LogCaptureFixture, fresh_date_log: Any) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limit = fresh_date_log.limit
    for index in range(limit + 100):
        image_from_json({"createDate": f"bad {index}", "lastOpDate": f"bad {index}"}, SHANGHAI)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == limit + 1  # one per remembered value, and one saying the rest are counted
    assert "only counted" in messages[-1]
    assert fresh_date_log.unlogged == 200
    assert len(fresh_date_log._seen) == limit


# --- errors from ZStack ---------------------------------------------------------------------------


def test_error_code_contract_example() -> None:
    raw = (
        '{"error":{"code":"ID.1001","description":"The session is invalid, either wrong session id or the '
        'session has been expired","details":"Session expired","elaboration":"错误信息: session 已过期，'
        '或者提供了不正确的 session id。","cost":"1ms","messages":{"code":"x"},'
        '"retryable":false,"httpStatus":503}}'
    )
    error = error_code_from_json(json.loads(raw)["error"])
    assert error.code == "ID.1001"
    assert error.details == "Session expired"
    assert error.elaboration.startswith("错误信息")
    assert error.cost == "1ms"
    assert not error.HasField("cause") and not error.HasField("opaque") and not error.HasField("location")


def test_error_code_every_field() -> None:
    obj = {
        "causes": [{"code": "SYS.1006", "details": "a"}, {"code": "SYS.1001", "cause": {"code": "SYS.1012"}}],
        "code": "SYS.1000",
        "description": "internal",
        "details": "boom",
        "elaboration": "Error message: ...",
        "location": "HostManagerImpl.java: send-connect-host-message (location:2/4)",
        "cost": "5ms",
        "globalErrorCode": "ORG_ZSTACK_IDENTITY_10020",
        "opaque": {"vm": {"uuid": "u", "ids": [1, 2.5, None, True, "s"]}, "n": 3},
        "cause": {
            "code": "SYS.1001",
            "cause": {"code": "SYS.1012", "cause": {"code": "SYS.1006", "details": "deep"}},
        },
    }
    error = error_code_from_json(obj)
    assert (error.code, error.description, error.details) == ("SYS.1000", "internal", "boom")
    assert error.location.startswith("HostManagerImpl") and error.cost == "5ms"
    assert error.global_error_code == "ORG_ZSTACK_IDENTITY_10020"
    assert [c.code for c in error.causes] == ["SYS.1006", "SYS.1001"]
    assert error.causes[1].cause.code == "SYS.1012"
    assert error.cause.code == "SYS.1001"
    assert error.cause.cause.code == "SYS.1012"
    assert error.cause.cause.cause.code == "SYS.1006" and error.cause.cause.cause.details == "deep"
    assert not error.cause.cause.cause.HasField("cause")
    assert json_format.MessageToDict(error.opaque) == {
        "vm": {"uuid": "u", "ids": [1.0, 2.5, None, True, "s"]},
        "n": 3.0,
    }


def test_error_code_skips_wrong_types() -> None:
    obj = {
        "code": 1001,
        "description": None,
        "details": ["x"],
        "elaboration": {"a": 1},
        "location": True,
        "cost": 5,
        "globalErrorCode": "G",
        "opaque": [1, 2],
        "cause": "not an object",
        "causes": [1, None, {"code": "SYS.1"}, "x"],
    }
    error = error_code_from_json(obj)
    assert error == error_pb2.ErrorCode(global_error_code="G", causes=[error_pb2.ErrorCode(code="SYS.1")])
    assert not error.HasField("opaque") and not error.HasField("cause")
    assert error_code_from_json({"causes": "x", "cause": [], "opaque": "x"}) == error_pb2.ErrorCode()


@pytest.mark.parametrize("obj", [None, "SYS.1000", 503, 1.5, True, [], [{"code": "x"}]], ids=repr)
def test_error_code_from_non_object_is_empty(obj: object) -> None:
    assert error_code_from_json(obj) == error_pb2.ErrorCode()


def test_error_code_empty_cause_is_present() -> None:
    assert error_code_from_json({"cause": {}}).HasField("cause")


def test_error_code_odd_values_are_cleaned() -> None:
    obj = json.loads(
        '{"details":"a\\udc80b\\ud83d\\ude00","opaque":{"big":1e400,"nan":NaN,"s":"\\ud800","\\udfff":1}}'
    )
    obj["opaque"]["huge"] = 10**400
    obj["opaque"][7] = "int key"
    error = error_code_from_json(obj)
    assert error.details == "a\ufffdb\U0001f600"
    assert json_format.MessageToDict(error.opaque) == {
        "big": None,
        "nan": None,
        "s": "\ufffd",
        "\ufffd": 1.0,
        "huge": None,
    }
    error_pb2.ErrorCode.FromString(error.SerializeToString())


def nested(depth: int, key: str = "cause") -> dict[str, Any]:
    """An error with a ``depth``-deep chain, built without recursion."""
    root: dict[str, Any] = {"code": "L0"}
    node = root
    for level in range(1, depth + 1):
        child: dict[str, Any] = {"code": f"L{level}"}
        node[key] = child if key == "cause" else [child]
        node = child
    return root


@pytest.mark.parametrize("key", ["cause", "causes"])
def test_error_code_deep_nesting_is_cut(key: str) -> None:
    error = error_code_from_json(nested(10_000, key))
    depth = 0
    node = error
    while True:
        assert node.code == f"L{depth}"
        if key == "cause" and node.HasField("cause"):
            node = node.cause
        elif key == "causes" and node.causes:
            node = node.causes[0]
        else:
            break
        depth += 1
    assert depth == error_json._MAX_CAUSE_DEPTH
    error_pb2.ErrorCode.FromString(error.SerializeToString())


def test_error_code_worst_nesting_still_parses() -> None:
    """The deepest chain with the deepest opaque at its bottom stays within protobuf's nesting limit."""
    deep_json: Any = "leaf"
    for level in range(200):
        deep_json = {"k": deep_json} if level % 2 else [deep_json]
    root = nested(200)
    node = root
    while "cause" in node:
        node["opaque"] = {"x": copy.deepcopy(deep_json)}
        node = node["cause"]
    node["opaque"] = {"x": deep_json}
    error = error_code_from_json(root)
    parsed = error_pb2.ErrorCode.FromString(error.SerializeToString())
    assert parsed == error
    json_format.MessageToJson(parsed)


# --- property-based -----------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters() | st.characters(codec=None, categories=["Cs"]), max_size=12)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
)
# Values shaped like parts of a ZStack answer, so the strategies reach deep into it as well.
DATE_TEXT = st.sampled_from(
    ["Jul 22, 2022 11:54:07 AM", "Jan 6, 2017, 3:51:16\u202fPM", "Feb 30, 2022 1:00:00 AM"]
)
IMAGE_KEYS = [*sorted(full_image()), "unknown"]
REF_KEYS = [*sorted(full_ref()), "unknown"]
HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_translation(body: object) -> list[image_pb2.ImageInventory] | None:
    """Translate ``body``; the only exception allowed is TranslationError. The result must serialize."""
    try:
        images = inventories_from_body(body, SHANGHAI)
    except TranslationError as error:
        assert error.field and error.reason and len(str(error)) < 400
        return None
    for image in images:
        image_pb2.ImageInventory.FromString(image.SerializeToString())
    return images


@HYPOTHESIS
@given(key=st.sampled_from(IMAGE_KEYS), value=JSON_VALUES | DATE_TEXT)
def test_any_value_in_any_image_field(key: str, value: object) -> None:
    obj = full_image()
    obj[key] = value
    images = check_translation({"inventories": [full_image(), obj]})
    if images is not None and key in ("name", "url") and isinstance(value, str):
        assert getattr(images[1], key) == value


@HYPOTHESIS
@given(key=st.sampled_from(REF_KEYS), value=JSON_VALUES | DATE_TEXT)
def test_any_value_in_any_ref_field(key: str, value: object) -> None:
    obj = full_image()
    obj["backupStorageRefs"][1][key] = value
    images = check_translation({"inventories": [obj]})
    if images is not None and key == "id" and value is not None:
        assert images[0].backup_storage_refs[1].id == value


@HYPOTHESIS
@given(body=JSON_VALUES | st.builds(lambda v: {"inventories": v}, JSON_VALUES))
def test_any_value_as_the_body(body: object) -> None:
    check_translation(body)


@HYPOTHESIS
@given(obj=JSON_VALUES)
def test_error_code_never_raises(obj: object) -> None:
    error_pb2.ErrorCode.FromString(error_code_from_json(obj).SerializeToString())


@HYPOTHESIS
@given(
    key=st.sampled_from(["code", "cause", "causes", "opaque", "details", "globalErrorCode"]),
    value=JSON_VALUES,
)
def test_error_code_never_raises_for_any_field(key: str, value: object) -> None:
    obj = {"code": "SYS.1000", "cause": {"code": "SYS.1001", key: value}, key: value}
    error = error_code_from_json(obj)
    assert error_pb2.ErrorCode.FromString(error.SerializeToString()) == error


ZONES = [SHANGHAI, UTC_ZONE, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def java_format(moment: datetime, java9: bool, space: str) -> str:
    """Format like Gson's default adapter in Locale.US (independently of the C locale)."""
    hour12 = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    comma = "," if java9 else ""
    return (
        f"{MONTHS[moment.month - 1]} {moment.day}, {moment.year}{comma} "
        f"{hour12}:{moment.minute:02d}:{moment.second:02d}{space}{half}"
    )


@HYPOTHESIS
@given(
    moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31, 23, 59, 59)),
    tz=st.sampled_from(ZONES),
    java9=st.booleans(),
    space=st.sampled_from([" ", "\u202f", "\u00a0"]),
)
def test_dates_round_trip(moment: datetime, tz: ZoneInfo, java9: bool, space: str) -> None:
    # What Java's ZStack means by a wall-clock time: its instant by translate.java_offset (standard
    # time in a gap or a fold, the raw offset before 1901-12-13), checked here independently.
    moment = moment.replace(microsecond=0, fold=0)
    stamp = parse_zstack_date(java_format(moment, java9, space), tz)
    assert stamp is not None
    if moment < datetime(1901, 12, 13, 20, 45, 52):
        probe = datetime(2000, 1, 1, tzinfo=tz)
        offset = probe.utcoffset() - (probe.dst() or timedelta(0))  # type: ignore[operator]
    else:
        readings = [moment.replace(tzinfo=tz), moment.replace(tzinfo=tz, fold=1)]
        offset = min(readings, key=lambda r: (r.dst() or timedelta(0), -r.fold)).utcoffset()  # type: ignore[assignment]
    assert stamp.seconds == int((moment - offset).replace(tzinfo=UTC).timestamp())  # type: ignore[operator]
    assert stamp.nanos == 0


@HYPOTHESIS
@given(
    value=JSON_VALUES | st.text(alphabet="JanFebJul0123456789:, APM\u202f", max_size=30),
    tz=st.sampled_from(ZONES),
)
def test_parse_zstack_date_never_raises(value: object, tz: ZoneInfo) -> None:
    stamp = parse_zstack_date(value, tz)
    assert stamp is None or stamp.ToJsonString()
