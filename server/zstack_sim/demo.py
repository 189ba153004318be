"""The demo data set (the default when no data file is given) and its well-known identifiers.

* ``DEMO_VM_UUID`` (Running): the API page's example image verbatim, then four full ISO images (one
  with a Chinese name and a URL with ``?a=b&c=d``, so Gson's escapes show).
* ``DEMO_STOPPED_VM_UUID`` (Stopped): one candidate.
* ``DEMO_STARTING_VM_UUID`` (Starting): has candidates configured but, being neither Running nor
  Stopped, answers ``{"inventories":[]}``.
* ``DEMO_EMPTY_VM_UUID`` (Running): no candidates.
* ``DEMO_MISSING_VM_UUID``: not in the data (503 SYS.1003).
* Every VM has ZStack's one default CD-ROM, empty. ``DEMO_ISO_UUID`` (CentOS 7) has two candidate
  VMs (``GetCandidateVmForAttachingIso``): the running and the stopped one.
* ``DEMO_SESSION_UUID``: a session of ``admin`` that never expires by time (it can still be expired
  through the control plane or logged out; ``POST /_sim/reset`` brings it back).
"""

from __future__ import annotations

from typing import Any

from zstack_sim.data import AccessKey, Account, Session, SimData, Vm

DEMO_ACCOUNT_NAME = "admin"
DEMO_ACCOUNT_PASSWORD = "password"  # noqa: S105 - demo credentials, by design
# ZStack's built-in admin account uuid.
DEMO_ACCOUNT_UUID = "36c27e8ff05c4780bf6d2fa65700f22e"
DEMO_SESSION_UUID = "61593aad03ca4b21916aade28bc29e28"
DEMO_ACCESS_KEY_ID = "Tzj61VKkmoIOjw3EQjQS"
DEMO_ACCESS_KEY_SECRET = "5zTFgNoVNRt3433R5GYpc9vk8NqS349V4YrDRrGf"  # noqa: S105 - demo credentials
DEMO_MN_UUID = "335d31b8ae244154a5ca401983f774cf"

DEMO_VM_UUID = "e2da653a0fba430f9d2e9a6240faed73"
DEMO_STOPPED_VM_UUID = "098a34a256e04b9984f2eda49e15cab4"
DEMO_STARTING_VM_UUID = "fc27a5a6779b4073babefff458e8b38d"
DEMO_EMPTY_VM_UUID = "42bbc43e3b0d42e28da41078247a0eeb"
DEMO_MISSING_VM_UUID = "f3d399187e294912955555b5e9550b77"

DEMO_SEED_IMAGE_UUID = "cb2c34a46a753c5ab95807fabbae56af"
_CENTOS = "30bb7b0024d541f08c203131764671be"
_UBUNTU = "c060b14c65874d4898e3748f34a25217"
_KYLIN = "6fce72a12964440ea6fa62b8e43f9976"
_WINDOWS = "a4ca6c4bc78840a8bcc3ac5172d7ccd4"
#: An ISO (CentOS 7) that the running and the stopped demo VMs list as a candidate, for the
#: attach/detach walk-through; and a second one (Ubuntu).
DEMO_ISO_UUID = _CENTOS
DEMO_SECOND_ISO_UUID = _UBUNTU
# Candidate order of DEMO_VM_UUID.
DEMO_IMAGE_UUIDS: tuple[str, ...] = (DEMO_SEED_IMAGE_UUID, _CENTOS, _UBUNTU, _KYLIN, _WINDOWS)

# Backup storages the images are on.
BS_IMAGESTORE = "bbf35e93d4ca4117b26ed82fb22c0abc"
BS_CEPH = "217396177c143e49ad21dd5679e28a61"
BS_SFTP = "1dec722436104211970defac98d10a0d"


def _seed_image() -> dict[str, Any]:
    # The example of the API page, verbatim, except the ref id: real servers send the DB id.
    return {
        "uuid": DEMO_SEED_IMAGE_UUID,
        "name": "TinyLinux",
        "url": "http://192.168.1.20/share/images/tinylinux.qcow2",
        "mediaType": "RootVolumeTemplate",
        "platform": "Linux",
        "format": "qcow2",
        "backupStorageRefs": [
            {
                "id": 1,
                "imageUuid": DEMO_SEED_IMAGE_UUID,
                "backupStorageUuid": BS_CEPH,
                "installPath": "ceph://zs-images/f0b149e053b34c7eb7fe694b182ebffd",
                "status": "Ready",
            }
        ],
    }


def iso_image(
    uuid: str,
    name: str,
    description: str,
    url: str,
    size: int,
    md5: str,
    guest_os: str,
    platform: str,
    virtio: bool,
    created: str,
    updated: str,
    refs: list[dict[str, Any]],
) -> dict[str, Any]:
    """A full ISO ImageInventory (every field the management node fills in for an ISO), dates as
    ISO-8601."""
    return {
        "uuid": uuid,
        "name": name,
        "description": description,
        "state": "Enabled",
        "status": "Ready",
        "size": size,
        "actualSize": size,
        "md5Sum": md5,
        "url": url,
        "mediaType": "ISO",
        "guestOsType": guest_os,
        "type": "zstack",
        "platform": platform,
        "architecture": "x86_64",
        "format": "iso",
        "system": False,
        "virtio": virtio,
        "createDate": created,
        "lastOpDate": updated,
        "backupStorageRefs": refs,
    }


def backup_storage_ref(
    ref_id: int, image: str, bs: str, path: str, created: str, updated: str
) -> dict[str, Any]:
    """An ImageBackupStorageRefInventory of a Ready image, dates as ISO-8601."""
    return {
        "id": ref_id,
        "imageUuid": image,
        "backupStorageUuid": bs,
        "installPath": path,
        "status": "Ready",
        "createDate": created,
        "lastOpDate": updated,
    }


def _demo_images() -> list[dict[str, Any]]:
    centos = iso_image(
        _CENTOS,
        "CentOS-7-x86_64-DVD-2009.iso",
        "CentOS 7.9 installation DVD",
        "http://10.0.0.5/iso/CentOS-7-x86_64-DVD-2009.iso",
        4712300544,
        "e33d7b1ea7a9e2f38c8f693215dd85c8",
        "CentOS 7",
        "Linux",
        True,
        "2022-07-22T11:54:07+08:00",
        "2022-07-22T11:54:08+08:00",
        [
            backup_storage_ref(
                2,
                _CENTOS,
                BS_IMAGESTORE,
                f"zstore://{_CENTOS}/3f9b1d0c62f34e0d8f2a1c7e5b4a69d8e1c2f3a4",
                "2022-07-22T11:54:07+08:00",
                "2022-07-22T11:54:08+08:00",
            )
        ],
    )
    ubuntu_refs = [
        backup_storage_ref(
            3,
            _UBUNTU,
            BS_IMAGESTORE,
            f"zstore://{_UBUNTU}/9c1e7b5d24a84f0e96b3d2a1c8e7f6b5a4d3c2b1",
            "2024-03-05T16:20:31+08:00",
            "2024-03-05T16:21:02+08:00",
        ),
        backup_storage_ref(
            4,
            _UBUNTU,
            BS_CEPH,
            "ceph://zs-images/7d2f0c9b8a6e4d3c2b1a0f9e8d7c6b5a",
            "2024-03-05T16:20:31+08:00",
            "2024-03-05T16:25:47+08:00",
        ),
    ]
    # One ref with the rarely-set export fields, so every field of the ref appears somewhere.
    ubuntu_refs[0]["exportMd5Sum"] = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    ubuntu_refs[0]["exportUrl"] = f"http://10.0.0.21:8001/export/{_UBUNTU}.iso"
    ubuntu = iso_image(
        _UBUNTU,
        "ubuntu-22.04.4-live-server-amd64.iso",
        "Ubuntu Server 22.04.4 LTS",
        "http://10.0.0.5/iso/ubuntu-22.04.4-live-server-amd64.iso",
        2104408064,
        "a7c8bd9e45c3f0b1d2e3f4a5b6c7d8e9",
        "Ubuntu 22.04",
        "Linux",
        True,
        "2024-03-05T16:20:31+08:00",
        "2024-03-05T16:25:47+08:00",
        ubuntu_refs,
    )
    kylin = iso_image(
        _KYLIN,
        "银河麒麟高级服务器操作系统 V10 安装盘",
        "国产操作系统安装镜像 <SP3> & 'x86_64' 版=测试用",
        "http://10.0.0.5/iso/kylin-v10-sp3.iso?a=b&c=d",
        4289675264,
        "5b2e9c1d7f3a4e6b8c0d1e2f3a4b5c6d",
        "Kylin 10",
        "Linux",
        False,
        "2023-11-18T09:03:44+08:00",
        "2023-11-18T21:47:09+08:00",
        [
            backup_storage_ref(
                5,
                _KYLIN,
                BS_SFTP,
                f"/zstack_bs/rootVolumeTemplates/acct-36c27e8f/{_KYLIN}/{_KYLIN}.iso",
                "2023-11-18T09:03:44+08:00",
                "2023-11-18T21:47:09+08:00",
            )
        ],
    )
    windows = iso_image(
        _WINDOWS,
        "Windows Server 2019 Datacenter (virtio drivers)",
        "Windows Server 2019 with the virtio-win 0.1.240 drivers slipstreamed",
        "http://10.0.0.5/iso/win2019-virtio.iso",
        5637144576,
        "f1e2d3c4b5a697887766554433221100",
        "Windows Server 2019",
        "Windows",
        True,
        "2023-01-09T00:15:02+08:00",
        "2023-01-09T12:00:00+08:00",
        [
            backup_storage_ref(
                6,
                _WINDOWS,
                BS_IMAGESTORE,
                f"zstore://{_WINDOWS}/2b4d6f8a0c1e3a5b7d9f1e3c5a7b9d0f2e4c6a8b",
                "2023-01-09T00:15:02+08:00",
                "2023-01-09T12:00:00+08:00",
            )
        ],
    )
    return [_seed_image(), centos, ubuntu, kylin, windows]


def base_data() -> SimData:
    """The demo account, its never-expiring session and access key; no VMs, no images."""
    data = SimData(management_node_uuid=DEMO_MN_UUID)
    data.accounts[DEMO_ACCOUNT_UUID] = Account(DEMO_ACCOUNT_UUID, DEMO_ACCOUNT_NAME, DEMO_ACCOUNT_PASSWORD)
    data.access_keys[DEMO_ACCESS_KEY_ID] = AccessKey(
        DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, DEMO_ACCOUNT_UUID
    )
    # 2024-05-01 09:00:00 +08:00; the session is pinned (expires_at=None).
    data.sessions[DEMO_SESSION_UUID] = Session(DEMO_SESSION_UUID, DEMO_ACCOUNT_UUID, 1714525200.0, None)
    return data


def demo_data() -> SimData:
    """A fresh copy of the demo data set (see the module docstring)."""
    data = base_data()
    for image in _demo_images():
        data.images[image["uuid"]] = image
    vms = [
        Vm(
            DEMO_VM_UUID,
            "demo-vm-running",
            "Running",
            list(DEMO_IMAGE_UUIDS),
            note="the API page's example image, then four full ISOs (a Chinese name, a URL with ?a=b&c=d)",
        ),
        Vm(DEMO_STOPPED_VM_UUID, "demo-vm-stopped", "Stopped", [_CENTOS]),
        Vm(
            DEMO_STARTING_VM_UUID,
            "demo-vm-starting",
            "Starting",
            [_CENTOS, _UBUNTU],
            note="has candidates, but ZStack lists none while the VM is starting",
        ),
        Vm(DEMO_EMPTY_VM_UUID, "demo-vm-no-iso", "Running", []),
    ]
    for vm in vms:
        data.vms[vm.uuid] = vm
    data.validate()
    return data
