"""Units of the ISO workflow: job uuids, job locations, the VM translation (no servers needed)."""

from __future__ import annotations

import re
import time
from zoneinfo import ZoneInfo

import pytest
from zstack_gateway import jobs, translate_vm
from zstack_gateway.deadline import Deadline
from zstack_gateway.translate import TranslationError

TZ = ZoneInfo("Asia/Shanghai")


def mutation(request_id: str = "r-1", key: str = "vm\x00iso", rpc: str = "AttachIso") -> jobs.Mutation:
    return jobs.Mutation(rpc, "POST", "/v1/vm-instances/x/iso/y", [], b"{}", key, request_id)


def test_job_uuid_is_32_hex_stable_and_separated_by_identity_request_and_attempt() -> None:
    first = jobs.job_uuid("a" * 32, mutation())
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert jobs.job_uuid("a" * 32, mutation()) == first
    others = {
        jobs.job_uuid("b" * 32, mutation()),  # another identity
        jobs.job_uuid("a" * 32, mutation(request_id="r-2")),
        jobs.job_uuid("a" * 32, mutation(key="vm\x00other")),  # another request, same request_id
        jobs.job_uuid("a" * 32, mutation(rpc="DetachIso")),
        jobs.job_uuid("a" * 32, mutation(), attempt=1),  # the submission after a re-login
    }
    assert first not in others and len(others) == 5


def test_without_request_id_every_call_is_a_new_job() -> None:
    assert jobs.job_uuid("a" * 32, mutation(request_id="")) != jobs.job_uuid(
        "a" * 32, mutation(request_id="")
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"apiTimeout":1800000,"location":"http://10.0.0.10:8080/zstack/v1/api-jobs/'
            + b"c" * 32
            + b'"}',
            "c" * 32,
        ),
        (b'{"location":"http://evil.example/zstack/v1/api-jobs/' + b"D" * 32 + b'"}', "d" * 32),
        (b'{"location":"http://x/zstack/v1/api-jobs/../../accounts/login"}', "e" * 32),
        (b'{"location":"http://x/zstack/v1/api-jobs/' + b"c" * 32 + b'/more"}', "e" * 32),
        (b'{"location": 5}', "e" * 32),
        (b"not json", "e" * 32),
        (b"{}", "e" * 32),
    ],
)
def test_only_a_well_formed_job_uuid_is_taken_from_a_location(body: bytes, expected: str) -> None:
    assert jobs.location_job(body, "e" * 32) == expected


def test_the_wait_ends_before_the_callers_deadline_with_room_for_the_status() -> None:
    caller = Deadline.start(2.0, 30.0)
    stop = jobs.stop_time(caller)
    assert caller.expires_at - 0.1 - jobs.STATUS_MARGIN <= stop < caller.expires_at - 0.1
    own = Deadline.start(None, 5.0)
    assert jobs.stop_time(own) == own.expires_at
    short = Deadline.start(0.2, 30.0)
    assert jobs.stop_time(short) > time.monotonic()  # a short deadline keeps most of its time


def test_vm_translation_is_strict_on_types_and_names_the_path() -> None:
    vm = translate_vm.vm_from_json(
        {
            "uuid": "u",
            "memorySize": 2**40,
            "cpuNum": 4,
            "internalId": 7,
            "createDate": "May 1, 2024 9:00:00 AM",
            "lastOpDate": "not a date",  # lenient: left unset
            "vmNics": [{"usedIps": [{"ipInBinary": [10, 0, -1, 200], "ipVersion": 4}]}],
            "allVolumes": [{"isShareable": False, "size": 1.0}],
            "vmCdRoms": [{"deviceId": 0, "isoUuid": None}],
            "unknown": {"x": 1},
        },
        TZ,
    )
    assert vm.memory_size == 2**40 and vm.cpu_num == 4 and vm.internal_id == 7
    assert vm.create_date.seconds == 1714525200 and not vm.HasField("last_op_date")
    assert vm.vm_nics[0].used_ips[0].ip_in_binary == bytes([10, 0, 255, 200])
    assert vm.all_volumes[0].HasField("is_shareable") and vm.all_volumes[0].size == 1
    assert not vm.vm_cd_roms[0].HasField("iso_uuid")
    for obj, path in [
        ({"cpuNum": 2**31}, "inventory.cpuNum"),
        ({"cpuNum": True}, "inventory.cpuNum"),
        ({"vmNics": {}}, "inventory.vmNics"),
        ({"vmNics": [5]}, "inventory.vmNics[0]"),
        ({"vmCdRoms": [{"isoUuid": 5}]}, "inventory.vmCdRoms[0].isoUuid"),
        (
            {"vmNics": [{"usedIps": [{"ipInBinary": "10.0.0.1"}]}]},
            "inventory.vmNics[0].usedIps[0].ipInBinary",
        ),
        ({"allVolumes": [{"isShareable": "no"}]}, "inventory.allVolumes[0].isShareable"),
        ({"name": "\ud800"}, "inventory.name"),
    ]:
        with pytest.raises(TranslationError) as info:
            translate_vm.vm_from_json(obj, TZ)
        assert info.value.field.startswith(path), (obj, info.value.field)


def test_inventory_body_needs_an_inventory_object() -> None:
    for body in ({}, [], {"inventory": None}, {"inventory": 3}):
        with pytest.raises(TranslationError):
            translate_vm.inventory_from_body(body, TZ)
