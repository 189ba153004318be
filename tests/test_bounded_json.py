"""The bounded JSON reader (zstack_gateway.bounded_json) that reads ZStack's error bodies.

* Within its limits it reads any JSON text exactly as ``json.loads`` does, whatever the spacing and
  escaping, and whatever it has to skip on the way (long lists, deep values), also with slices of a
  few bytes, which puts slice edges inside strings, escapes and brackets.
* Skipping finds the exact end of an array or object.
* Whatever the bytes, it returns or raises ValueError, and its time stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zstack_gateway import bounded_json
from zstack_gateway.bounded_json import CUT_MARK, CutDict, CutList

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings full of what makes JSON hard to skip: quotes, backslashes, brackets, non-ASCII.
tricky_text = st.text(alphabet=st.sampled_from(list('ab"\\[]{}, :é资🙂\n\t')), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**17), 10**17),
    st.floats(allow_nan=False, allow_infinity=False),
    tricky_text,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(tricky_text, children, max_size=5)
    ),
    max_leaves=25,
)


def encode(value: object, style: int) -> bytes:
    if style == 0:
        return json.dumps(value).encode()
    if style == 1:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return json.dumps(value, ensure_ascii=style == 2, indent=1).encode()


@contextlib.contextmanager
def tiny_slices(max_slice: int, min_slice: int) -> Iterator[None]:
    saved = bounded_json._MAX_SLICE, bounded_json._MIN_SLICE
    bounded_json._MAX_SLICE, bounded_json._MIN_SLICE = max_slice, min_slice  # type: ignore[misc]
    try:
        yield
    finally:
        bounded_json._MAX_SLICE, bounded_json._MIN_SLICE = saved  # type: ignore[misc]


@PROPS
@given(value=values, style=st.integers(0, 3))
def test_within_its_limits_it_reads_like_json_loads(value: object, style: int) -> None:
    assert bounded_json.loads(encode(value, style)) == json.loads(encode(value, style))


@PROPS
@given(
    skipped=st.lists(values, min_size=1, max_size=8),
    deep=st.integers(0, 40),
    style=st.integers(0, 3),
    slices=st.sampled_from([(65_536, 256), (16, 2), (64, 8), (7, 1)]),
)
def test_what_follows_a_skipped_part_is_read_exactly(
    skipped: list[Any], deep: int, style: int, slices: tuple[int, int]
) -> None:
    """Members after a cut list and after a value nested past the depth limit are read as they are."""
    doc = {
        "list": [1, 2, 3, *skipped],
        "deep": [[[[{"x": skipped}]]]] if deep else skipped,
        "after": skipped,
    }
    body = encode(doc, style)
    if deep:
        # Nest the "deep" member `deep` more levels down, past the depth limit.
        text = body.decode()
        start = text.index('"deep"') + len('"deep"')
        colon = text.index(":", start) + 1
        end = text.index('"after"')
        comma = text.rindex(",", 0, end)
        body = (text[:colon] + "[" * deep + text[colon:comma] + "]" * deep + text[comma:]).encode()
    with tiny_slices(*slices):
        got = bounded_json.loads(body, max_depth=4, max_items=3)
    assert isinstance(got, dict)
    assert got["list"] == [1, 2, 3] and isinstance(got["list"], CutList)
    assert got["after"] == bounded_json.loads(encode(skipped, style), max_depth=3, max_items=3)


@PROPS
@given(
    value=st.one_of(st.lists(values, max_size=6), st.dictionaries(tricky_text, values, max_size=6)),
    nest=st.integers(0, 300),
    style=st.integers(0, 3),
    slices=st.sampled_from([(65_536, 256), (16, 2), (64, 8), (7, 1), (512, 64)]),
    tail=st.sampled_from([b"", b" ", b', "x"]', b"]]]"]),
)
def test_skipping_finds_the_exact_end_of_a_container(
    value: Any, nest: int, style: int, slices: tuple[int, int], tail: bytes
) -> None:
    text = b"[" * nest + encode(value, style) + b"]" * nest
    with tiny_slices(*slices):
        end, _ = bounded_json.skip_rest(text + tail, 1, 10**9)
    assert end == len(text)


@PROPS
@given(body=st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode()[:-1])))
def test_any_bytes_read_or_raise_value_error(body: bytes) -> None:
    with contextlib.suppress(ValueError):
        bounded_json.loads(body)


def test_limits_are_kept_and_said() -> None:
    body = json.dumps({"s": "x" * 100, "l": list(range(10)), "o": {str(i): i for i in range(10)}}).encode()
    got = bounded_json.loads(body, max_items=4, max_chars=50)
    assert isinstance(got, dict)
    assert got["s"] == "x" * (50 - len(CUT_MARK)) + CUT_MARK
    assert got["l"] == [0, 1, 2, 3] and isinstance(got["l"], CutList)
    assert got["o"] == {"0": 0, "1": 1, "2": 2, "3": 3} and isinstance(got["o"], CutDict)
    assert bounded_json.loads(b"[[[[1]]], 2]", max_depth=2) == [[None], 2]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"caf\xe9"', "caf\ufffd"),
        (b'"\\ud800 x"', "\ud800 x"),
        (b'"tab\there"', "tab\there"),
        (b"NaN", "nan"),
        (b"-Infinity", "-inf"),
        (b"1" * 5000, "inf"),
        (b"12345678901234567890", "1.2345678901234567e+19"),
    ],
)
def test_what_json_servers_send_that_strict_parsers_refuse(raw: bytes, expected: str) -> None:
    got = bounded_json.loads(raw)
    assert (got if isinstance(got, str) else repr(got)) == expected


@pytest.mark.parametrize("escape", ["\\n", "\\\\", '\\"', "\\u00e9", "\\ud83d\\ude00"])
@pytest.mark.parametrize("shift", range(8))
def test_a_long_string_cut_in_an_escape_stays_readable(escape: str, shift: int) -> None:
    raw = ("a" * shift + escape * 40).encode()
    got = bounded_json.loads(b'"' + raw + b'"', max_chars=5)
    assert isinstance(got, str) and got.endswith(CUT_MARK)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"a": ' + b"[" * 2_000_000 + b"]" * 2_000_000 + b', "b": 1}', id="4MB-deep"),
        pytest.param(b"[" + b"[[[[[[[[[[1]]]]]]]]]]," * 300_000 + b"2]", id="wide-of-10-deep"),
        pytest.param(b"[" + b'{"a": "]]]", "b": "\\"["},' * 200_000 + b"2]", id="brackets-in-strings"),
        pytest.param(b"[" * 3_000_000, id="never-closed"),
    ],
)
def test_time_stays_bounded_whatever_the_shape(body: bytes) -> None:
    started = time.monotonic()
    with contextlib.suppress(ValueError):
        bounded_json.loads(body, max_depth=3, max_items=2)
    assert time.monotonic() - started < 0.4
