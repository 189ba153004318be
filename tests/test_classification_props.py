"""Properties of the error classification (zstack_gateway.errors), whatever ZStack or a proxy sends.

* Any HTTP status 100-599 with any body classifies without raising, into a status whose details
  trailer stays under gRPC's 8 KiB metadata limit and whose message stays readable (<= 1,000 chars).
* Any JSON value as ZStack's ``error`` object classifies without raising, on ``error.code`` and never
  on the HTTP status.
* A body that is not ZStack JSON follows the README's table by HTTP status alone.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from zstack_gateway import errors
from zstack_gateway import status as wire
from zstack_gateway.error_json import error_code_from_json

C = grpc.StatusCode
TRAILER_LIMIT = 8 * 1024
MESSAGE_LIMIT = 1000

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Strategies

ZSTACK_CODES = ["SYS.1000", "SYS.1001", "SYS.1003", "SYS.1007", "SYS.1010", "SYS.1012", "ID.1001", "ID.1002"]

# Text as ZStack and proxies write it: ASCII, Chinese (ZStack localises its messages), emoji, lone
# surrogates escaped in JSON (Gson writes them), control characters; sometimes very long.
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["中文错误信息", "🙂", "\ud800", "a\x00b", "<b>html</b>"]).map(lambda s: s * 3000),
    st.integers(0, 20_000).map(lambda n: "x" * n),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)

# Objects shaped like ZStack's ErrorCode, with every field sometimes of the wrong type.
error_objects = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "code": st.one_of(st.sampled_from(ZSTACK_CODES), json_values),
            "description": st.one_of(texts, json_values),
            "details": st.one_of(texts, json_values),
            "elaboration": texts,
            "location": texts,
            "cost": texts,
            "globalErrorCode": st.one_of(st.sampled_from(["ORG_ZSTACK_IDENTITY_10020"]), texts),
            "opaque": json_values,
        },
    ),
    lambda children: st.one_of(
        st.builds(lambda e, c: {**e, "cause": c}, children, children),
        st.builds(lambda e, cs: {**e, "causes": cs}, children, st.lists(children, max_size=6)),
    ),
    max_leaves=12,
)


def _json_body(value: object) -> bytes:
    return json.dumps({"error": value}).encode()


bodies = st.one_of(
    st.binary(max_size=2048),
    st.builds(_json_body, error_objects),
    st.builds(_json_body, json_values),
    json_values.map(lambda v: json.dumps(v).encode()),
    texts.map(
        lambda t: f"<html><head><title>{t}</title></head><body>{t}</body></html>".encode("utf-8", "replace")
    ),
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
)


# ---------------------------------------------------------------------------------------------
# Checks shared by the properties


def check_status(err: errors.GatewayError) -> None:
    """What every classified failure must satisfy on its way to the caller: it converts to a grpc
    status without raising, its details trailer is under 8 KiB and its message at most 1,000 chars."""
    assert isinstance(err, errors.GatewayError)
    sent = wire.to_grpc_status(err)  # must not raise
    assert sent.code == err.code
    assert len(sent.details) <= MESSAGE_LIMIT
    assert wire.encoded_details_size(err) < TRAILER_LIMIT


def error_infos(err: errors.GatewayError) -> list[error_details_pb2.ErrorInfo]:
    infos = []
    for detail in wire.to_status_proto(err).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


def _percent_encoded_len(message: str) -> int:
    """Length of grpc-message on the wire: UTF-8, every byte outside printable ASCII (and '%') as %XX."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode("utf-8"))


def trailer_size(err: errors.GatewayError) -> int:
    """The trailers of the status as grpc counts them against the caller's metadata limit (8 KiB by
    default): per entry, key + value + 32 bytes (HPACK's entry overhead)."""
    sent = wire.to_grpc_status(err)
    entries = [
        ("grpc-status", len(str(sent.code.value[0]))),
        ("grpc-message", _percent_encoded_len(sent.details)),
        ("grpc-status-details-bin", wire.encoded_details_size(err)),
    ]
    return sum(len(key) + size + 32 for key, size in entries)


# ---------------------------------------------------------------------------------------------
# Properties


@PROPS
@given(status=st.integers(100, 599), body=bodies, deadline_sent=st.booleans())
@example(status=503, body=b'{"error": ' + b'{"cause": ' * 3000 + b"{}" + b"}" * 3001, deadline_sent=True)
@example(status=200, body=b"[" * 100_000, deadline_sent=False)
@example(
    status=503,
    body=b'{"error": {"code": "SYS.1003", "details": "' + b"\\ud800" * 5000 + b'"}}',
    deadline_sent=False,
)
def test_any_http_answer_classifies_into_a_small_status(status, body, deadline_sent):
    err = errors.from_http_response(status, body, deadline_sent=deadline_sent)
    check_status(err)


#: The error table's rows for ZStack's own codes (docs/errors.md) (a copy, so the test checks the code
#: against the docs).
README_ZSTACK_TABLE = {
    "SYS.1000": C.INTERNAL,
    "SYS.1003": C.NOT_FOUND,
    "SYS.1007": C.INVALID_ARGUMENT,
    "SYS.1009": C.UNAVAILABLE,
    "SYS.1010": C.UNAVAILABLE,
    "SYS.1011": C.UNAVAILABLE,
    "SYS.1012": C.UNAVAILABLE,
    "ID.1000": C.UNAUTHENTICATED,
    "ID.1001": C.UNAUTHENTICATED,
    "ID.1002": C.PERMISSION_DENIED,
    "ID.1006": C.RESOURCE_EXHAUSTED,
}


def expected_for_zstack(error: dict, deadline_sent: bool) -> set[grpc.StatusCode]:
    code = error.get("code") if isinstance(error.get("code"), str) else ""
    if code == "SYS.1001":
        expected = {C.DEADLINE_EXCEEDED if deadline_sent else C.UNAVAILABLE}
    else:
        expected = {README_ZSTACK_TABLE.get(code, C.UNKNOWN)}
    if error.get("globalErrorCode") in ("ORG_ZSTACK_IDENTITY_10020",):
        expected.add(C.UNAUTHENTICATED)  # a newer ZStack's "invalid session" code
    return expected


@PROPS
@given(error=st.one_of(error_objects, json_values), status=st.integers(100, 599), deadline_sent=st.booleans())
def test_any_json_error_object_classifies_on_its_code_alone(error, status, deadline_sent):
    body = _json_body(error)
    err = errors.from_http_response(status, body, deadline_sent=deadline_sent)
    check_status(err)
    if isinstance(error, dict):
        # ZStack JSON: classified on error.code as the README says, whatever the HTTP status (ZStack
        # answers every business error with 503).
        assert err.code in expected_for_zstack(error, deadline_sent)
        again = errors.from_http_response(503, body, deadline_sent=deadline_sent)
        assert (err.code, err.reason) == (again.code, again.reason)


@PROPS
@given(error=error_objects, deadline_sent=st.booleans())
def test_zstack_error_codes_translate_and_classify_without_raising(error, deadline_sent):
    ec = error_code_from_json(error)
    err = errors.from_zstack_error(ec, 503, deadline_sent=deadline_sent)
    check_status(err)
    code = error.get("code")
    if isinstance(code, str) and code.isascii():
        assert err.error_code.code == code  # ZStack's code is kept as it came


# Not ZStack JSON: the code comes from the HTTP status alone, as the README's table says.
def _expected_for_plain(status: int, text: str) -> set[grpc.StatusCode]:
    if status == 400:
        return {C.UNAUTHENTICATED, C.INTERNAL}
    if status in (401, 403):
        return {C.UNAUTHENTICATED}
    if status == 404:
        return {C.UNIMPLEMENTED}
    if status in (502, 503, 504):
        return {C.UNAVAILABLE}
    if status == 202:
        return {C.INTERNAL}
    if 500 <= status < 600:
        return {C.INTERNAL}
    return {C.UNKNOWN}


@PROPS
@given(
    status=st.integers(100, 599),
    body=st.one_of(
        st.binary(max_size=512).filter(lambda b: not b.lstrip().startswith(b"{")),
        texts.map(lambda t: t.encode("utf-8", "surrogatepass")).filter(
            lambda b: not b.lstrip().startswith(b"{")
        ),
    ),
)
def test_non_json_body_follows_the_table_by_status(status, body):
    err = errors.from_http_response(status, body, deadline_sent=False)
    assert err.code in _expected_for_plain(status, body.decode("utf-8", "replace"))
    assert err.http_status == status
    check_status(err)


@pytest.mark.parametrize("depth", [10, 100, 900, 5_000, 50_000])
def test_deeply_nested_error_bodies_never_raise(depth):
    causes = b'{"error": ' + b'{"code": "SYS.1000", "cause": ' * depth + b"{}" + b"}" * (depth + 1)
    lists = b'{"error": {"code": "SYS.1000", "opaque": {"a": ' + b"[" * depth + b"]" * depth + b"}}}"
    for body in (causes, lists):
        err = errors.from_http_response(503, body, deadline_sent=False)
        check_status(err)


# ---------------------------------------------------------------------------------------------
# Promises the README makes about every status: exactly one ErrorInfo, and trailers the caller's grpc
# accepts with its default 8 KiB metadata limit (grpc-message travels percent-encoded, so a Chinese
# character costs 9 bytes there; ZStack localises its messages).

HUGE_CHINESE_GLOBAL_CODE = {"code": "SYS.1003", "details": "x", "globalErrorCode": "错误" * 3000}
LONG_CHINESE_DETAILS = {"code": "SYS.1003", "details": "资源未找到" * 400}


@PROPS
@given(error=error_objects, status=st.integers(100, 599))
@example(error=HUGE_CHINESE_GLOBAL_CODE, status=503)
def test_every_status_carries_exactly_one_error_info(error, status):
    err = errors.from_http_response(status, _json_body(error), deadline_sent=False)
    assert len(error_infos(err)) == 1


@PROPS
@given(error=error_objects, status=st.integers(100, 599))
@example(error=LONG_CHINESE_DETAILS, status=503)
def test_whole_trailer_fits_the_callers_default_metadata_limit(error, status):
    err = errors.from_http_response(status, _json_body(error), deadline_sent=False)
    assert trailer_size(err) < TRAILER_LIMIT
