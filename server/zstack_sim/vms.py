"""A VM as ZStack's REST API writes it: ``VmInstanceInventory`` with its NICs, volumes and CD-ROMs
(iso-workflow §6), in Java declaration order, null fields dropped (by ``gson.dumps``).

The simulator's data names a VM's uuid, name, state, architecture and CD-ROMs; everything else
(zone, host, NIC, IP, root volume ...) is derived from the VM's uuid, so it is stable across runs.
``internalId`` and ``usedIpUuid`` (``@APINoSee``) are sent, as real servers do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from zstack_sim.data import CdRom, Vm, derived_uuid

__all__ = ["CREATED_AT", "render_cd_rom", "render_vm"]

#: When every simulated VM, NIC, volume and CD-ROM was created: 2024-05-01 09:00:00 +08:00.
CREATED_AT = 1714525200.0
_CHANGED_AT = CREATED_AT + 3600
ZONE_UUID = "3a3ed8916c5c4d93ae46f8363f080284"
CLUSTER_UUID = "4d4a8e4f9eda4b1ba3e4f8d5c1c2b0a1"
HOST_UUID = "c5b0a8b5a70b4e2e9a3a58d08b18f1a3"
L3_UUID = "50e637dc68b7480291ba87cbb81d94ad"
IP_RANGE_UUID = "8b1e5e7bb2de4ac18f4b2bd53b6c7a31"
PRIMARY_STORAGE_UUID = "a6b1e4c9d3f84a52b7e0c1d2e3f4a5b6"
INSTANCE_OFFERING_UUID = "e3a7c6f1b2d04c95a8e7f6d5c4b3a291"

DateFormat = Callable[[float], str]


def _number(vm_uuid: str, salt: str, modulo: int) -> int:
    digest = hashlib.md5(f"{vm_uuid}/{salt}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % modulo


def render_cd_rom(vm_uuid: str, cd: CdRom, date: DateFormat) -> dict[str, Any]:
    return {
        "uuid": cd.uuid,
        "vmInstanceUuid": vm_uuid,
        "deviceId": cd.device_id,
        "isoUuid": cd.iso_uuid,
        "isoInstallPath": cd.iso_install_path,
        "name": f"vm-{vm_uuid}-cdRom",
        "description": None,
        "protocol": cd.protocol,
        "createDate": date(CREATED_AT),
        "lastOpDate": date(cd.last_op_at if cd.last_op_at is not None else CREATED_AT),
    }


def render_vm(vm: Vm, date: DateFormat, root_image_uuid: str | None = None) -> dict[str, Any]:
    """``VmInstanceInventory`` of ``vm``; ``date`` writes an epoch time as ZStack's JSON does."""
    uuid = vm.uuid
    root_image_uuid = root_image_uuid or derived_uuid(uuid, "image")
    running = vm.state in ("Running", "Paused", "Stopping", "Migrating", "Rebooting")
    nic_uuid = derived_uuid(uuid, "nic-0")
    used_ip_uuid = derived_uuid(uuid, "ip-0")
    root_volume = derived_uuid(uuid, "root-volume")
    octets = (10, 0, _number(uuid, "ip3", 254) + 1, _number(uuid, "ip4", 253) + 2)
    ip = ".".join(map(str, octets))
    mac = "fa:" + ":".join(f"{_number(uuid, f'mac{i}', 256):02x}" for i in range(5))
    used_ip = {
        "uuid": used_ip_uuid,
        "ipRangeUuid": IP_RANGE_UUID,
        "l3NetworkUuid": L3_UUID,
        "ipVersion": 4,
        "ip": ip,
        "netmask": "255.255.0.0",
        "gateway": "10.0.0.1",
        "usedFor": "DynamicIP",
        "ipInLong": int.from_bytes(bytes(octets), "big"),
        # byte[] as Gson writes it: signed bytes.
        "ipInBinary": [o - 256 if o > 127 else o for o in octets],
        "vmNicUuid": nic_uuid,
        "createDate": date(CREATED_AT),
        "lastOpDate": date(CREATED_AT),
    }
    nic = {
        "uuid": nic_uuid,
        "vmInstanceUuid": uuid,
        "usedIpUuid": used_ip_uuid,
        "l3NetworkUuid": L3_UUID,
        "ip": ip,
        "mac": mac,
        "hypervisorType": "KVM",
        "netmask": "255.255.0.0",
        "gateway": "10.0.0.1",
        "driverType": "virtio",
        "usedIps": [used_ip],
        "internalName": f"vnic{_number(uuid, 'nic', 9000) + 1}.0",
        "deviceId": 0,
        "type": "VNIC",
        "state": "enable",
        "createDate": date(CREATED_AT),
        "lastOpDate": date(CREATED_AT),
    }
    volume = {
        "uuid": root_volume,
        "name": f"ROOT-for-{vm.name}",
        "primaryStorageUuid": PRIMARY_STORAGE_UUID,
        "vmInstanceUuid": uuid,
        "rootImageUuid": root_image_uuid,
        "installPath": f"/zstack_ps/rootVolumes/acct-36c27e8f/vol-{root_volume}/{root_volume}.qcow2",
        "type": "Root",
        "format": "qcow2",
        "size": 21474836480,
        "actualSize": 1612709888,
        "deviceId": 0,
        "state": "Enabled",
        "status": "Ready",
        "createDate": date(CREATED_AT),
        "lastOpDate": date(_CHANGED_AT),
        "isShareable": False,
    }
    return {
        "uuid": uuid,
        "name": vm.name,
        "description": None,
        "zoneUuid": ZONE_UUID,
        "clusterUuid": CLUSTER_UUID,
        "imageUuid": root_image_uuid,
        "hostUuid": HOST_UUID if running else None,
        "lastHostUuid": HOST_UUID,
        "instanceOfferingUuid": INSTANCE_OFFERING_UUID,
        "rootVolumeUuid": root_volume,
        "platform": "Linux",
        "architecture": vm.architecture,
        "defaultL3NetworkUuid": L3_UUID,
        "type": "UserVm",
        "hypervisorType": "KVM",
        "memorySize": 2147483648,
        "cpuNum": 2,
        "cpuSpeed": 0,
        "allocatorStrategy": "LastHostPreferredAllocatorStrategy",
        "createDate": date(CREATED_AT),
        "lastOpDate": date(_CHANGED_AT),
        "state": vm.state,
        "internalId": 100 + _number(uuid, "internal", 100000),
        "vmNics": [nic],
        "allVolumes": [volume],
        "vmCdRoms": [render_cd_rom(uuid, cd, date) for cd in vm.drives],
        "guestOsType": "Linux",
    }
