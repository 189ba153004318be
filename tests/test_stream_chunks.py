"""stream.ImageStream on its own: the messages it builds from ZStack's raw body are exactly the images
of the list, translated as the full parse translates them, in messages that keep the proto's rules,
whatever the JSON's layout, characters and image sizes, and wherever its text windows fall."""

from __future__ import annotations

import itertools
import json
from zoneinfo import ZoneInfo

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack_gateway import errors, stream, translate

TZ = ZoneInfo("Asia/Shanghai")
MiB = 1024 * 1024


def expected_images(body: bytes) -> list[bytes]:
    """Each image as the full parse (orjson) and translate make it, serialized."""
    items = translate.inventory_items(orjson.loads(body))
    return [
        translate.image_from_json(item, TZ, f"inventories[{i}]").SerializeToString()
        for i, item in enumerate(items)
    ]


def built(body: bytes) -> list[stream.Chunk]:
    return list(stream.ImageStream(bytearray(body), TZ).messages())


def check_rules(chunks: list[stream.Chunk], images: list[bytes]) -> None:
    assert chunks, "no message at all"
    if not images:
        assert chunks == [stream.Chunk(b"", 0)]
        return
    assert chunks[0].images <= stream.FIRST_CHUNK_IMAGES
    assert all(0 < c.images <= stream.CHUNK_IMAGES for c in chunks)
    assert all(len(c.data) <= stream.CHUNK_BYTES for c in chunks)
    got = [
        img.SerializeToString()
        for c in chunks
        for img in svc.GetCandidateIsoResponse.FromString(c.data).inventories
    ]
    assert got == images
    assert [c.images for c in chunks] == [
        len(svc.GetCandidateIsoResponse.FromString(c.data).inventories) for c in chunks
    ]
    # A message holds fewer images than allowed only when the next image would not fit, or at the end.
    for chunk, following in itertools.pairwise(chunks):
        allowed = stream.FIRST_CHUNK_IMAGES if chunk is chunks[0] else stream.CHUNK_IMAGES
        if chunk.images < allowed:
            first_next = svc.GetCandidateIsoResponse.FromString(following.data).inventories[0]
            framed = svc.GetCandidateIsoResponse(inventories=[first_next]).ByteSize()
            assert len(chunk.data) + framed > stream.CHUNK_BYTES


# --- layout, characters and windows ----------------------------------------------------------------

_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from([*list('"\\/{}[],: \n\t'), "中", "é", "😀"]),
    ),
    max_size=40,
)
_extra = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_image = st.fixed_dictionaries(
    {"uuid": _text},
    optional={
        "name": _text,
        "description": _text,
        "size": st.integers(0, 2**62),
        "system": st.booleans(),
        "createDate": st.sampled_from(["Jul 22, 2022 11:54:07 AM", 1658462047000, "not a date"]),
        "backupStorageRefs": st.lists(
            st.fixed_dictionaries({"id": st.integers(0, 99), "installPath": _text}), max_size=2
        ),
        "somethingNew": _extra,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.lists(_image, max_size=40),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
    window=st.integers(1, 300),
)
def test_messages_hold_exactly_the_translated_images(images, indent, ascii_only, window):
    body = json.dumps(
        {"total": len(images), "inventories": images}, indent=indent, ensure_ascii=ascii_only
    ).encode()
    saved = stream.WINDOW_BYTES
    stream.WINDOW_BYTES = window  # small windows: items, characters and numbers cut everywhere
    try:
        chunks = built(body)
    finally:
        stream.WINDOW_BYTES = saved
    check_rules(chunks, expected_images(body))


@pytest.mark.parametrize("depth", [500, 960, 995, 1010])
def test_deep_nesting_in_an_unknown_field_translates_as_the_full_parse_does(depth):
    """Nesting the quick check or the json scanner find too deep, which orjson still reads."""
    body = b'{"inventories": [{"uuid": "a", "extra": ' + b"[" * depth + b"]" * depth + b'}, {"uuid": "b"}]}'
    check_rules(built(body), expected_images(body))


# --- sizes -----------------------------------------------------------------------------------------


def framed_size(description: int) -> int:
    image = translate.image_from_json({"uuid": "u", "description": "d" * description}, TZ)
    return svc.GetCandidateIsoResponse(inventories=[image]).ByteSize()


def description_for(framed: int) -> int:
    """The description length that makes an image take exactly ``framed`` bytes in a message."""
    length = framed - 16
    while framed_size(length) > framed:
        length -= 1
    while framed_size(length) < framed:
        length += 1
    assert framed_size(length) == framed
    return length


def test_an_image_of_exactly_1_mib_fits_alone_and_one_byte_more_does_not():
    exact = description_for(stream.CHUNK_BYTES)
    body = json.dumps({"inventories": [{"uuid": "a"}, {"uuid": "u", "description": "d" * exact}]}).encode()
    chunks = built(body)
    check_rules(chunks, expected_images(body))
    assert [c.images for c in chunks] == [1, 1]
    assert len(chunks[1].data) == stream.CHUNK_BYTES

    over = json.dumps(
        {"inventories": [{"uuid": "a"}, {"uuid": "u", "description": "d" * (exact + 1)}]}
    ).encode()
    reader = stream.ImageStream(bytearray(over), TZ).reader()
    assert next(reader).images == 1
    with pytest.raises(errors.GatewayError) as info:
        next(reader)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.reason == "IMAGE_TOO_LARGE"
    assert "inventories[1]" in info.value.message
    with pytest.raises(errors.GatewayError):  # every later read ends the same way
        next(reader)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 400_000), min_size=1, max_size=60))
def test_messages_fill_up_to_1_mib_for_any_image_sizes(sizes):
    body = json.dumps(
        {"inventories": [{"uuid": str(i), "description": "x" * n} for i, n in enumerate(sizes)]}
    ).encode()
    check_rules(built(body), expected_images(body))


def test_a_bad_image_ends_the_stream_after_the_images_before_it():
    body = json.dumps({"inventories": [{"uuid": str(i)} for i in range(40)] + [{"uuid": 7}]}).encode()
    reader = stream.ImageStream(bytearray(body), TZ).reader()
    assert [next(reader).images, next(reader).images] == [16, 24]
    for _ in range(2):
        with pytest.raises(translate.TranslationError) as info:
            next(reader)
        assert info.value.field == "inventories[40].uuid"


def test_readers_share_messages_and_the_account_is_released_when_the_last_one_leaves():
    from zstack_gateway.budget import MemoryBudget

    budget = MemoryBudget(10 * MiB)
    body = bytearray(
        json.dumps(
            {"inventories": [{"uuid": str(i), "description": "x" * 5000} for i in range(600)]}
        ).encode()
    )
    account = budget.account()
    account.charge(len(body))
    images = stream.ImageStream(body, TZ, account)
    first, second = images.reader(), images.reader()
    a = [next(first) for _ in range(3)]
    assert budget.held > len(body)  # the body and three messages
    b = list(second)
    assert b[:3] == a
    # The body went when the last image was built; the messages the first reader has not taken stay.
    assert budget.held == sum(len(c.data) for c in b[3:])
    rest = list(first)
    assert a + rest == b
    assert budget.held == 0  # every reader took every message
    first.close()
    second.close()
    assert budget.held == 0
    with pytest.raises(errors.GatewayError):  # the stream let go of its first messages: none can join
        images.reader()
