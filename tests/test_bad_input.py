"""Bad input, table-driven: every request the gateway must refuse gets its documented code and never
reaches ZStack; the odd-but-valid ones reach ZStack exactly as the caller meant them.

Non-ASCII ``authorization`` metadata: grpc (Python, C core) refuses to send a non-ASCII value under
a text key, as ``str`` or as ``bytes``: the call fails in the client with INTERNAL "Invalid
metadata" and nothing leaves the process (:func:`test_grpc_client_refuses_non_ascii_text_metadata`
pins that down). The only way such bytes reach the gateway from a grpc client is a ``-bin`` key,
e.g. ``authorization-bin``, which is not the ``authorization`` entry: UNAUTHENTICATED.
"""

from __future__ import annotations

import grpc
import pytest
import zstack_sim
from statuses import Decoded, decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack_sim.control_client import SimControl

C = grpc.StatusCode
VM = zstack_sim.DEMO_VM_UUID
SESSION = zstack_sim.DEMO_SESSION_UUID
AUTH = (("authorization", f"OAuth {SESSION}"),)
ISO_PATH = f"/zstack/v1/vm-instances/{VM}/iso-candidates"


def caller_requests(sim: SimControl) -> list[dict]:
    """What reached the simulated ZStack on a caller's behalf (background readiness probes, if the
    gateway makes any, are not a caller's request)."""
    return [r for r in sim.zstack_requests() if "/management-nodes/" not in r["path"]]


def run(stub, vm: str = VM, metadata=AUTH, **tags) -> tuple[Decoded | None, int]:
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm, **tags)
    images = 0
    try:
        for chunk in stub.GetCandidateIso(request, metadata=metadata, timeout=5):
            images += len(chunk.inventories)
    except grpc.RpcError as err:
        return decode(err), images
    return None, images


# ---------------------------------------------------------------------------------------------
# Refused: (id, vm_instance_uuid, tags, field the BadRequest names)

INVALID_REQUESTS = [
    ("uuid-empty", "", {}, "vm_instance_uuid"),
    ("uuid-short", VM[:31], {}, "vm_instance_uuid"),
    ("uuid-long", VM + "0", {}, "vm_instance_uuid"),
    ("uuid-very-long", VM * 3000, {}, "vm_instance_uuid"),
    ("uuid-non-hex", "g" + VM[1:], {}, "vm_instance_uuid"),
    ("uuid-dashed", "e2da653a-0fba-430f-9d2e-9a6240faed73", {}, "vm_instance_uuid"),
    ("uuid-dot-dot-32-chars", "../" + VM[3:], {}, "vm_instance_uuid"),
    ("uuid-dot-dot-escape", "../../v1/accounts/login", {}, "vm_instance_uuid"),
    ("uuid-encoded-slash", VM[:29] + "%2F", {}, "vm_instance_uuid"),
    ("uuid-encoded-dot-dot", "%2E%2E%2F" + VM[9:], {}, "vm_instance_uuid"),
    ("uuid-query", VM[:31] + "?", {}, "vm_instance_uuid"),
    ("uuid-query-appended", VM + "?systemTags=x", {}, "vm_instance_uuid"),
    ("uuid-fragment", VM[:31] + "#", {}, "vm_instance_uuid"),
    ("uuid-leading-space", " " + VM[1:], {}, "vm_instance_uuid"),
    ("uuid-trailing-space", VM + " ", {}, "vm_instance_uuid"),
    ("uuid-inner-space", VM[:16] + " " + VM[17:], {}, "vm_instance_uuid"),
    ("uuid-newline", VM[:31] + "\n", {}, "vm_instance_uuid"),
    ("uuid-crlf-injection", VM[:30] + "\r\n", {}, "vm_instance_uuid"),
    ("uuid-nul", VM[:16] + "\x00" + VM[17:], {}, "vm_instance_uuid"),
    ("uuid-tab", VM[:31] + "\t", {}, "vm_instance_uuid"),
    ("uuid-del", VM[:31] + "\x7f", {}, "vm_instance_uuid"),
    ("uuid-non-ascii-letter", VM[:31] + "é", {}, "vm_instance_uuid"),
    ("uuid-fullwidth-digits", "０" * 32, {}, "vm_instance_uuid"),
    ("uuid-arabic-indic-digits", "٠١٢٣٤٥٦٧٨٩" * 3 + "٠١", {}, "vm_instance_uuid"),
    ("uuid-emoji", VM[:30] + "🙂", {}, "vm_instance_uuid"),
    ("uuid-zero-width-space", VM[:16] + "\u200b" + VM[16:31], {}, "vm_instance_uuid"),
    ("uuid-rtl-override", VM[:16] + "\u202e" + VM[17:], {}, "vm_instance_uuid"),
    ("tag-empty-system", VM, {"system_tags": [""]}, "system_tags[0]"),
    ("tag-empty-user-second", VM, {"user_tags": ["ok", ""]}, "user_tags[1]"),
    ("tag-1025-chars", VM, {"system_tags": ["x" * 1025]}, "system_tags[0]"),
    ("tag-huge", VM, {"user_tags": ["y" * 200_000]}, "user_tags[0]"),
    ("tags-65", VM, {"system_tags": [f"t{i}" for i in range(65)]}, "system_tags"),
    ("tags-thousands", VM, {"user_tags": [f"t{i}" for i in range(5000)]}, "user_tags"),
    ("tag-newline", VM, {"system_tags": ["a\nb"]}, "system_tags[0]"),
    ("tag-carriage-return", VM, {"user_tags": ["a\rb"]}, "user_tags[0]"),
    ("tag-nul", VM, {"system_tags": ["a\x00b"]}, "system_tags[0]"),
    ("tag-tab", VM, {"system_tags": ["a\tb"]}, "system_tags[0]"),
    ("tag-line-separator", VM, {"system_tags": ["a\u2028b"]}, "system_tags[0]"),
    # Each tag is valid alone; together they would pass the 32 KiB the gateway allows a query.
    ("tags-query-too-long", VM, {"system_tags": ["&" * 1000] * 64}, "system_tags"),
]


@pytest.mark.parametrize(
    ("vm", "tags", "field"), [pytest.param(*row[1:], id=row[0]) for row in INVALID_REQUESTS]
)
def test_invalid_request_is_refused_before_zstack(stub, sim: SimControl, vm, tags, field):
    d, _ = run(stub, vm, **tags)
    assert d is not None, "the call succeeded"
    assert d.code == C.INVALID_ARGUMENT, d.message
    assert d.info.reason == "INVALID_REQUEST"
    assert d.bad_request is not None
    fields = [v.field for v in d.bad_request.field_violations]
    assert field in fields, fields
    assert 0 < len(d.message) <= 1000
    assert d.details_bin_size < 8 * 1024
    assert caller_requests(sim) == []


# ---------------------------------------------------------------------------------------------
# Refused: authorization metadata, (id, metadata)

LONG_TOKEN = "a" * 129

BAD_CREDENTIALS = [
    ("missing", ()),
    ("empty", (("authorization", ""),)),
    ("blank", (("authorization", "   "),)),
    ("bearer", (("authorization", f"Bearer {SESSION}"),)),
    ("basic", (("authorization", "Basic YWRtaW46cGFzc3dvcmQ="),)),
    ("scheme-only", (("authorization", "OAuth"),)),
    ("scheme-and-space", (("authorization", "OAuth "),)),
    ("session-only", (("authorization", SESSION),)),
    ("token-with-space", (("authorization", f"OAuth {SESSION[:16]} {SESSION[16:]}"),)),
    ("token-with-semicolon", (("authorization", f"OAuth {SESSION};admin"),)),
    ("token-with-comma", (("authorization", f"OAuth {SESSION},{SESSION}"),)),
    ("token-129-chars", (("authorization", f"OAuth {LONG_TOKEN}"),)),
    ("token-8000-chars", (("authorization", "OAuth " + "b" * 8000),)),
    ("two-entries", (("authorization", f"OAuth {SESSION}"), ("authorization", f"OAuth {SESSION}"))),
    ("non-ascii-under-bin-key", (("authorization-bin", f"OAuth é{SESSION}".encode()),)),
    ("ascii-under-bin-key", (("authorization-bin", f"OAuth {SESSION}".encode()),)),
    ("other-key", (("x-authorization", f"OAuth {SESSION}"),)),
]


@pytest.mark.parametrize("metadata", [pytest.param(row[1], id=row[0]) for row in BAD_CREDENTIALS])
def test_bad_credentials_are_unauthenticated_before_zstack(stub, sim: SimControl, metadata):
    d, _ = run(stub, metadata=metadata)
    assert d is not None, "the call succeeded"
    assert d.code == C.UNAUTHENTICATED, d.message
    assert d.info.reason == "MISSING_CREDENTIALS"
    assert SESSION not in d.message  # a session never goes back in an error text
    assert LONG_TOKEN not in d.message
    assert caller_requests(sim) == []


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((("authorization", f"OAuth é{SESSION}"),), id="str"),
        pytest.param((("authorization", f"OAuth {SESSION}é".encode()),), id="utf8-bytes"),
        pytest.param((("authorization", b"OAuth \xe9" + SESSION.encode()),), id="latin1-bytes"),
        pytest.param((("authorization", f"OAuth {SESSION}\r\nX-Evil: 1"),), id="crlf"),
    ],
)
def test_grpc_client_refuses_non_ascii_text_metadata(stub, sim: SimControl, metadata):
    """Not the gateway's rule but grpc's: such a value cannot be sent at all under a text key."""
    d, _ = run(stub, metadata=metadata)
    assert d is not None
    assert d.code == C.INTERNAL
    assert "metadata" in d.message.lower()
    assert caller_requests(sim) == []


# ---------------------------------------------------------------------------------------------
# Accepted: odd but valid


@pytest.mark.parametrize(
    "vm",
    [
        pytest.param(VM, id="lower"),
        pytest.param(VM.upper(), id="upper"),
        pytest.param(VM[:16].upper() + VM[16:], id="mixed"),
    ],
)
def test_any_case_uuid_is_accepted_and_sent_lower_case(stub, sim: SimControl, vm):
    d, images = run(stub, vm)
    assert d is None, d
    assert images == 5
    assert [r["path"] for r in caller_requests(sim)] == [ISO_PATH]


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param({"system_tags": ["a&b=c#d"]}, id="amp-eq-hash"),
        pytest.param({"system_tags": ["k::v=1&x=2#frag"], "user_tags": ["&", "=", "#"]}, id="bare-specials"),
        pytest.param({"user_tags": ["100%2F", "a+b", "?q=1", "../x"]}, id="percent-plus-query-dots"),
        pytest.param({"user_tags": ["中文 tag", "emoji 🙂", "é"]}, id="non-ascii-and-spaces"),
        pytest.param({"system_tags": ["z" * 1024]}, id="tag-1024-chars"),
        pytest.param(
            {"system_tags": [f"s{i}" for i in range(64)], "user_tags": ["u"] * 64}, id="64-tags-each"
        ),
    ],
)
def test_valid_tags_arrive_intact_as_query_values(stub, sim: SimControl, tags):
    d, images = run(stub, **tags)
    assert d is None, d
    assert images == 5
    [req] = caller_requests(sim)
    assert req["path"] == ISO_PATH
    expected = [["systemTags", t] for t in tags.get("system_tags", [])] + [
        ["userTags", t] for t in tags.get("user_tags", [])
    ]
    assert req["query"] == expected
