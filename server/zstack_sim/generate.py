"""Generated data sets for benchmarks: one Running VM with N realistic ISO candidates."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from zstack_sim.data import SimData, Vm
from zstack_sim.demo import (
    BS_CEPH,
    BS_IMAGESTORE,
    BS_SFTP,
    DEMO_VM_UUID,
    backup_storage_ref,
    base_data,
    iso_image,
)

__all__ = ["generate"]

# (name pattern, guestOsType, platform, virtio, size range in bytes)
_DISTROS: tuple[tuple[str, str, str, bool, tuple[int, int]], ...] = (
    ("CentOS-7-x86_64-DVD-{v}.iso", "CentOS 7", "Linux", True, (4_000_000_000, 4_800_000_000)),
    ("Rocky-9.{v}-x86_64-dvd.iso", "Rocky Linux 9", "Linux", True, (8_000_000_000, 10_500_000_000)),
    ("ubuntu-22.04.{v}-live-server-amd64.iso", "Ubuntu 22.04", "Linux", True, (1_800_000_000, 2_200_000_000)),
    ("debian-12.{v}.0-amd64-netinst.iso", "Debian 12", "Linux", True, (600_000_000, 700_000_000)),
    (
        "openEuler-22.03-LTS-SP{v}-x86_64-dvd.iso",
        "openEuler 22.03",
        "Linux",
        True,
        (3_500_000_000, 4_200_000_000),
    ),
    ("Kylin-Server-V10-SP{v}-x86_64.iso", "Kylin 10", "Linux", False, (4_000_000_000, 4_500_000_000)),
    ("SLE-15-SP{v}-Full-x86_64-GM-Media1.iso", "SUSE 15", "Linux", True, (12_000_000_000, 14_000_000_000)),
    (
        "Win2019_Datacenter_EN_v{v}.iso",
        "Windows Server 2019",
        "Windows",
        False,
        (5_000_000_000, 5_800_000_000),
    ),
    ("Win2022_Standard_CN_v{v}.iso", "Windows Server 2022", "Windows", False, (5_200_000_000, 6_000_000_000)),
    ("virtio-win-0.1.{v}.iso", "Other", "Other", True, (500_000_000, 700_000_000)),
)

_BACKUP_STORAGES: tuple[tuple[str, str], ...] = (
    (BS_IMAGESTORE, "imagestore"),
    (BS_CEPH, "ceph"),
    (BS_SFTP, "sftp"),
    ("6293ee53c0744e8b9822f30d5f82d1d9", "imagestore"),
)

_CST = timezone(timedelta(hours=8))
_EPOCH = datetime(2022, 1, 1, tzinfo=_CST)


def _hex(rng: random.Random, nbytes: int) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def _install_path(rng: random.Random, kind: str, image_uuid: str, bs_uuid: str) -> str:
    if kind == "imagestore":
        return f"zstore://{image_uuid}/{_hex(rng, 20)}"
    if kind == "ceph":
        return f"ceph://pri-c-{bs_uuid[:8]}/{_hex(rng, 16)}"
    return f"/zstack_bs/rootVolumeTemplates/acct-36c27e8f/{image_uuid}/{image_uuid}.iso"


def _image(rng: random.Random, index: int, next_ref_id: int) -> tuple[dict[str, Any], int]:
    pattern, guest_os, platform, virtio, (lo, hi) = _DISTROS[index % len(_DISTROS)]
    uuid = _hex(rng, 16)
    version = 100 + index
    name = pattern.format(v=version)
    size = rng.randrange(lo, hi)
    created = _EPOCH + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400))
    updated = created + timedelta(seconds=rng.randrange(1, 7 * 86400))
    refs: list[dict[str, Any]] = []
    for bs_uuid, kind in rng.sample(_BACKUP_STORAGES, rng.choice((1, 1, 2))):
        ref_created = created + timedelta(seconds=rng.randrange(0, 60))
        path = _install_path(rng, kind, uuid, bs_uuid)
        refs.append(
            backup_storage_ref(next_ref_id, uuid, bs_uuid, path, ref_created.isoformat(), updated.isoformat())
        )
        next_ref_id += 1
    image = iso_image(
        uuid,
        name,
        f"{guest_os} installation media #{index} (generated for benchmarks)",
        f"http://10.0.0.5/iso/{name}",
        size,
        _hex(rng, 16),
        guest_os,
        platform,
        virtio,
        created.isoformat(),
        updated.isoformat(),
        refs,
    )
    return image, next_ref_id


def generate(n_images: int, *, seed: int = 20240501) -> SimData:
    """The demo account/session/access key plus one Running VM (uuid ``DEMO_VM_UUID``) with
    ``n_images`` ISO candidates, each with 1-2 backup-storage refs (about 1 KB of JSON per image).

    Deterministic for a given ``seed``.
    """
    if n_images < 0:
        raise ValueError("n_images must be >= 0")
    rng = random.Random(seed)
    data: SimData = base_data()
    next_ref_id = 1
    order: list[str] = []
    for index in range(n_images):
        image, next_ref_id = _image(rng, index, next_ref_id)
        data.images[image["uuid"]] = image
        order.append(image["uuid"])
    data.vms[DEMO_VM_UUID] = Vm(DEMO_VM_UUID, f"bench-vm-{n_images}-isos", "Running", order)
    return data
