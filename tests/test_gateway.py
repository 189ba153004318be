"""GetCandidateIso end to end: a real grpc channel to the gateway, the gateway to the simulator."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
import zstack_sim
from conftest import AUTH, SESSION
from google.protobuf import json_format
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl

SEED_UUID = "cb2c34a46a753c5ab95807fabbae56af"


def call(
    stub: svc_grpc.VmInstanceServiceStub, vm: str, metadata=AUTH, timeout=5.0, **kw
) -> list[svc.GetCandidateIsoResponse]:
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=vm, **kw)
    return list(stub.GetCandidateIso(request, metadata=metadata, timeout=timeout))


def images_of(chunks: list[svc.GetCandidateIsoResponse]) -> list[dict]:
    return [json_format.MessageToDict(img) for chunk in chunks for img in chunk.inventories]


def fail(stub, vm: str = zstack_sim.DEMO_VM_UUID, **kw):
    with pytest.raises(grpc.RpcError) as info:
        call(stub, vm, **kw)
    return decode(info.value)


def raw_zstack(sim: SimControl, vm: str) -> dict:
    req = urllib.request.Request(
        f"{sim.url}/zstack/v1/vm-instances/{vm}/iso-candidates", headers={"Authorization": f"OAuth {SESSION}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_seed_example_image_streams_as_on_the_api_page(stub, sim):
    images = images_of(call(stub, zstack_sim.DEMO_VM_UUID))
    seed = next(i for i in images if i["uuid"] == SEED_UUID)
    assert seed["name"] == "TinyLinux"
    assert seed["url"] == "http://192.168.1.20/share/images/tinylinux.qcow2"
    assert seed["mediaType"] == "RootVolumeTemplate"
    assert seed["platform"] == "Linux"
    assert seed["format"] == "qcow2"
    ref = seed["backupStorageRefs"][0]
    assert ref["backupStorageUuid"] == "217396177c143e49ad21dd5679e28a61"
    assert ref["installPath"] == "ceph://zs-images/f0b149e053b34c7eb7fe694b182ebffd"
    assert ref["status"] == "Ready"
    assert ref["imageUuid"] == SEED_UUID


def test_list_equals_zstacks_list_in_zstacks_order_with_every_field(stub, sim):
    raw = raw_zstack(sim, zstack_sim.DEMO_VM_UUID)["inventories"]
    images = images_of(call(stub, zstack_sim.DEMO_VM_UUID))
    assert [i["uuid"] for i in images] == [r["uuid"] for r in raw]
    full = max(raw, key=len)
    got = next(i for i in images if i["uuid"] == full["uuid"])
    for key, value in full.items():
        if key in ("createDate", "lastOpDate"):
            assert got[key].endswith("Z")
        elif key == "backupStorageRefs":
            assert len(got[key]) == len(value)
            assert {r["backupStorageUuid"] for r in got[key]} == {r["backupStorageUuid"] for r in value}
            assert all("id" in r for r in got[key])
        elif key in ("size", "actualSize"):
            assert int(got[key]) == value
        else:
            assert got[key] == value, key


def test_stopped_vm_lists_its_candidates(stub, sim):
    assert images_of(call(stub, zstack_sim.DEMO_STOPPED_VM_UUID))


@pytest.mark.parametrize("vm", [zstack_sim.DEMO_STARTING_VM_UUID, zstack_sim.DEMO_EMPTY_VM_UUID])
def test_vm_without_candidates_gets_one_empty_message(stub, sim, vm):
    chunks = call(stub, vm)
    assert len(chunks) == 1
    assert list(chunks[0].inventories) == []


def test_upper_case_uuid_is_sent_lower_case(stub, sim):
    images = images_of(call(stub, zstack_sim.DEMO_VM_UUID.upper()))
    assert images
    assert (
        sim.zstack_requests()[-1]["path"]
        == f"/zstack/v1/vm-instances/{zstack_sim.DEMO_VM_UUID}/iso-candidates"
    )


def test_missing_vm_is_not_found_with_zstacks_error_intact(stub, sim):
    d = fail(stub, zstack_sim.DEMO_MISSING_VM_UUID)
    assert d.code == grpc.StatusCode.NOT_FOUND
    assert d.message.startswith("ZStack SYS.1003: invalid field[vmInstanceUuid]")
    assert zstack_sim.DEMO_MISSING_VM_UUID in d.message
    assert d.error_code is not None and d.error_code.code == "SYS.1003"
    assert "not found" in d.error_code.details
    assert d.info.domain == "zstack-gateway.zstack.io"
    assert d.info.reason == "ZSTACK_SYS_1003"
    assert d.info.metadata["zstackCode"] == "SYS.1003"
    assert d.info.metadata["httpStatus"] == "503"


def test_unknown_session_is_unauthenticated(stub, sim):
    d = fail(stub, metadata=(("authorization", "OAuth " + "0" * 32),))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert d.error_code.code == "ID.1001"
    assert d.message.startswith("ZStack ID.1001:")


def test_vm_existence_is_checked_before_the_session_as_zstack_does(stub, sim):
    d = fail(stub, zstack_sim.DEMO_MISSING_VM_UUID, metadata=(("authorization", "OAuth " + "0" * 32),))
    assert d.code == grpc.StatusCode.NOT_FOUND


def test_no_credentials_is_unauthenticated_without_an_upstream_call(stub, sim):
    d = fail(stub, metadata=())
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: OAuth <session-uuid>" in d.message
    assert d.info.reason == "MISSING_CREDENTIALS"
    assert sim.zstack_requests() == []


@pytest.mark.parametrize("value", ["Bearer abc", "OAuth", "OAuth a b", "Basic YWRtaW46cGFzc3dvcmQ="])
def test_malformed_credentials_are_unauthenticated_without_an_upstream_call(stub, sim, value):
    d = fail(stub, metadata=(("authorization", value),))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert "YWRtaW46" not in d.message
    assert sim.zstack_requests() == []


@pytest.mark.parametrize(
    ("vm", "kw", "field"),
    [
        ("", {}, "vm_instance_uuid"),
        ("abc", {}, "vm_instance_uuid"),
        ("8e1f3c2a-9b7d-4e6f-8a0b-1c2d3e4f5a6b", {}, "vm_instance_uuid"),
        ("../../accounts/login/aaaaaaaaaaaaaaaa", {}, "vm_instance_uuid"),
        (zstack_sim.DEMO_VM_UUID, {"system_tags": [""]}, "system_tags[0]"),
        (zstack_sim.DEMO_VM_UUID, {"user_tags": ["x" * 5000]}, "user_tags[0]"),
        (zstack_sim.DEMO_VM_UUID, {"system_tags": ["a\nb"]}, "system_tags[0]"),
    ],
)
def test_invalid_request_gets_bad_request_and_no_upstream_call(stub, sim, vm, kw, field):
    d = fail(stub, vm, **kw)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.bad_request is not None
    assert [v.field for v in d.bad_request.field_violations] == [field]
    assert field in d.message
    assert sim.zstack_requests() == []


def test_tags_go_as_repeated_keys_and_commas_are_not_separators(stub, sim):
    call(stub, zstack_sim.DEMO_VM_UUID, system_tags=["a,b", "k::v=1&x=2#frag"], user_tags=["中文 tag"])
    req = sim.zstack_requests()[-1]
    assert req["query"] == [
        ["systemTags", "a,b"],
        ["systemTags", "k::v=1&x=2#frag"],
        ["userTags", "中文 tag"],
    ]
    assert req["path"] == f"/zstack/v1/vm-instances/{zstack_sim.DEMO_VM_UUID}/iso-candidates"
    assert req["headers"]["Authorization"] == f"OAuth {SESSION}"


def test_chunks_concatenate_to_the_full_list_and_start_small(make_gateway, sim):
    # A second simulator with many images, to see chunking at work.
    with zstack_sim.run_in_thread(zstack_sim.generate(1500)) as big:
        chunks = call(
            make_gateway(zstack_url=big.url).stub, zstack_sim.DEMO_VM_UUID, metadata=AUTH, timeout=30
        )
    sizes = [len(c.inventories) for c in chunks]
    assert sum(sizes) == 1500
    assert 1 <= sizes[0] <= 16
    assert len(sizes) > 2
    assert all(c.ByteSize() <= 1024 * 1024 + 64 * 1024 for c in chunks)
