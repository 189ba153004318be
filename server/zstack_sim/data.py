"""The simulator's data: accounts, access keys, sessions, VMs and images.

Data file format (``zstack-sim --data FILE``, :func:`load_data`; :meth:`SimData.to_json` writes the same
shape, and ``zstack-sim --dump-data`` prints the demo data in it). One JSON object; every list may be
omitted::

    {
      "managementNodeUuid": "<32 hex>",               // optional; used in SYS.1010 details
      "accounts":   [{"uuid": "<32 hex>", "name": "admin", "password": "password",
                      "type": "SystemAdmin"}],                     // optional; default: SystemAdmin
                                                                    // for "admin", else Normal
      "accessKeys": [{"id": "<AccessKeyId>", "secret": "<AccessKeySecret>", "accountUuid": "<32 hex>"}],
      "sessions":   [{"uuid": "<32 hex>", "accountUuid": "<32 hex>",
                      "createDate": "2024-05-01T09:00:00+08:00",   // optional, default: load time
                      "expiredDate": null}],                        // null: never expires (until
                                                                    // expired or logged out); else a date
      "vms":        [{"uuid": "<32 hex>", "name": "vm1", "state": "Running",
                      "architecture": "x86_64",                     // optional, informational
                      "note": "what this VM is for",                // optional, shown in the table
                      "candidates": ["<image uuid>", ...],         // reply order for iso-candidates
                      "accountUuid": "<32 hex>",                    // optional owner; default: the
                                                                    // first SystemAdmin account
                      "cdRoms": [{"uuid": "<32 hex>", "deviceId": 0,   // optional; default: one
                                  "isoUuid": "<image uuid>",       // empty CD-ROM (ZStack's
                                  "isoInstallPath": "...", "protocol": "..."}]}],  // vm.vmDefaultCdRomNum)
      "images":     [ImageInventory, ...]
    }

* Passwords are stored in plain text; the login API compares the lowercase hex SHA-512 of it.
* ``images`` entries are ImageInventory objects exactly as the management node would send them
  (contract §3.3), except that ``createDate``/``lastOpDate`` (on images and on backup-storage refs) may
  be given as ISO-8601, with an offset (converted to the simulator's MN time zone) or without one
  (taken as MN-local), or as Gson strings (``Jul 22, 2022 11:54:07 AM``, sent unchanged). Fields are
  emitted in ZStack's declaration order whatever their order in the file; absent fields stay absent
  (nothing is filled in, so an entry may be as sparse as the API page's example); unknown fields are
  kept and written after the known ones. Each ``backupStorageRefs`` entry should carry an integer
  ``id`` (real servers send the DB id).
* Dates in ``sessions`` use the same date forms.
* Every image a VM lists in ``candidates`` must exist in ``images``.
* The candidate VMs of an ISO (``GetCandidateVmForAttachingIso``) are the Running and Stopped VMs that
  list it in ``candidates``, in data order (a simplification of ZStack's storage-based rule).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from zstack_sim import gson
from zstack_sim.zones import resolve_tz

__all__ = [
    "IMAGE_FIELDS",
    "REF_FIELDS",
    "AccessKey",
    "Account",
    "CdRom",
    "DataError",
    "Session",
    "SimData",
    "Vm",
    "load_data",
    "sha512_hex",
]

# ImageInventory and ImageBackupStorageRefInventory field order (Java declaration order, contract §3.3).
IMAGE_FIELDS: tuple[str, ...] = (
    "uuid",
    "name",
    "description",
    "state",
    "status",
    "size",
    "actualSize",
    "md5Sum",
    "url",
    "mediaType",
    "guestOsType",
    "type",
    "platform",
    "architecture",
    "format",
    "system",
    "virtio",
    "createDate",
    "lastOpDate",
    "backupStorageRefs",
    "systemTags",
)
REF_FIELDS: tuple[str, ...] = (
    "id",
    "imageUuid",
    "backupStorageUuid",
    "installPath",
    "status",
    "exportMd5Sum",
    "exportUrl",
    "createDate",
    "lastOpDate",
)
_DATE_FIELDS = ("createDate", "lastOpDate")


class DataError(ValueError):
    """The data file is malformed."""


def sha512_hex(password: str) -> str:
    return hashlib.sha512(password.encode("utf-8")).hexdigest()


@dataclass
class Account:
    uuid: str
    name: str
    password: str
    #: "SystemAdmin" or "Normal"; default: "SystemAdmin" for the account named admin.
    type: str = ""

    def __post_init__(self) -> None:
        if not self.type:
            self.type = "SystemAdmin" if self.name == "admin" else "Normal"

    @property
    def password_hash(self) -> str:
        return sha512_hex(self.password)


@dataclass
class AccessKey:
    id: str
    secret: str
    account_uuid: str


@dataclass
class Session:
    uuid: str
    account_uuid: str
    # Epoch seconds on the simulator's clock; ``expires_at=None`` never expires by time.
    created_at: float
    expires_at: float | None
    user_uuid: str = ""

    def __post_init__(self) -> None:
        if not self.user_uuid:
            # An account login's session carries the account's uuid as its user uuid.
            self.user_uuid = self.account_uuid


#: The VM states in which ZStack lists a VM's ISO candidates; in any other it answers an empty list.
LISTING_STATES = ("Running", "Stopped")


@dataclass
class CdRom:
    """One CD-ROM of a VM (``VmCdRomVO``). Times are epoch seconds on the simulator's clock."""

    uuid: str
    device_id: int
    iso_uuid: str | None = None
    iso_install_path: str | None = None
    protocol: str | None = None
    last_op_at: float | None = None


def default_cd_rom(vm_uuid: str) -> CdRom:
    """The CD-ROM ZStack gives a new VM (``vm.vmDefaultCdRomNum`` = 1), its uuid derived from the VM's."""
    return CdRom(derived_uuid(vm_uuid, "cdrom-0"), 0)


def derived_uuid(base: str, kind: str) -> str:
    """A stable 32-hex uuid for a resource of ``base`` that the data does not name (NIC, volume ...)."""
    return hashlib.md5(f"{base}/{kind}".encode(), usedforsecurity=False).hexdigest()


@dataclass
class Vm:
    uuid: str
    name: str
    state: str
    candidates: list[str] = field(default_factory=list)
    architecture: str = "x86_64"
    #: What the VM is for, in a word: ``zstack-sim --print-table`` shows it (see zstack_sim.table).
    note: str = ""

    #: None: the default CD-ROM.
    cd_roms: list[CdRom] | None = None
    #: The owning account; None: the first SystemAdmin account.
    account_uuid: str | None = None

    def __post_init__(self) -> None:
        if self.cd_roms is None:
            self.cd_roms = [default_cd_rom(self.uuid)]

    def listed_candidates(self) -> tuple[str, ...]:
        """The image uuids an iso-candidates call lists, in order (none unless Running or Stopped)."""
        return tuple(self.candidates) if self.state in LISTING_STATES else ()

    @property
    def drives(self) -> list[CdRom]:
        """The CD-ROMs, by device id."""
        return sorted(self.cd_roms or (), key=lambda c: c.device_id)


@dataclass
class SimData:
    """Everything the simulated management node knows. Mutable while serving (sessions change)."""

    accounts: dict[str, Account] = field(default_factory=dict)
    access_keys: dict[str, AccessKey] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    management_node_uuid: str = "a4e1fb0e0ba24a6d8a9c1b5f3e1d7c20"

    def copy(self) -> SimData:
        return copy.deepcopy(self)

    def candidate_vms(self, iso_uuid: str) -> list[Vm]:
        """What GetCandidateVmForAttachingIso lists: the Running and Stopped VMs listing the ISO among
        their candidates; none for an image on no backup storage. No check of media type, CD-ROMs or
        what is attached (as ZStack)."""
        image = self.images.get(iso_uuid)
        if image is None or not image.get("backupStorageRefs"):
            return []
        return [vm for vm in self.vms.values() if vm.state in LISTING_STATES and iso_uuid in vm.candidates]

    def find_vm(self, uuid: str) -> Vm | None:
        """The VM with this uuid, compared case-insensitively. [INF] ZStack looks resources up in
        MySQL, whose default collation ignores case (and trailing spaces, which the caller trims)."""
        vm = self.vms.get(uuid)
        if vm is None and uuid != uuid.lower():
            vm = self.vms.get(uuid.lower())
        return vm

    def account_by_name(self, name: str) -> Account | None:
        for account in self.accounts.values():
            if account.name == name:
                return account
        return None

    def validate(self) -> None:
        for vm in self.vms.values():
            for image_uuid in vm.candidates:
                if image_uuid not in self.images:
                    raise DataError(f"vm {vm.uuid} lists unknown candidate image {image_uuid}")
        for key in self.access_keys.values():
            if key.account_uuid not in self.accounts:
                raise DataError(f"access key {key.id} refers to unknown account {key.account_uuid}")
        for session in self.sessions.values():
            if session.account_uuid not in self.accounts:
                raise DataError(f"session {session.uuid} refers to unknown account {session.account_uuid}")

    def to_json(self, tz: tzinfo) -> dict[str, Any]:
        """The data-file form of this data (session times as ISO-8601 in ``tz``)."""

        def iso(epoch: float | None) -> str | None:
            return None if epoch is None else datetime.fromtimestamp(epoch, tz).isoformat()

        return {
            "managementNodeUuid": self.management_node_uuid,
            "accounts": [
                {"uuid": a.uuid, "name": a.name, "password": a.password, "type": a.type}
                for a in self.accounts.values()
            ],
            "accessKeys": [
                {"id": k.id, "secret": k.secret, "accountUuid": k.account_uuid}
                for k in self.access_keys.values()
            ],
            "sessions": [
                {
                    "uuid": s.uuid,
                    "accountUuid": s.account_uuid,
                    "createDate": iso(s.created_at),
                    "expiredDate": iso(s.expires_at),
                }
                for s in self.sessions.values()
            ],
            "vms": [
                {
                    "uuid": v.uuid,
                    "name": v.name,
                    "state": v.state,
                    "architecture": v.architecture,
                    **({"note": v.note} if v.note else {}),
                    "candidates": list(v.candidates),
                    "accountUuid": v.account_uuid,
                    "cdRoms": [
                        {
                            "uuid": c.uuid,
                            "deviceId": c.device_id,
                            "isoUuid": c.iso_uuid,
                            "isoInstallPath": c.iso_install_path,
                            "protocol": c.protocol,
                        }
                        for c in v.drives
                    ],
                }
                for v in self.vms.values()
            ],
            "images": [copy.deepcopy(i) for i in self.images.values()],
        }


def render_image(image: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """An image in wire form: declaration order, nulls dropped, dates as Gson strings in ``tz``."""
    out = _ordered(image, IMAGE_FIELDS, tz)
    refs = out.get("backupStorageRefs")
    if isinstance(refs, list):
        out["backupStorageRefs"] = [_ordered(r, REF_FIELDS, tz) if isinstance(r, dict) else r for r in refs]
    return out


def _ordered(obj: dict[str, Any], order: tuple[str, ...], tz: tzinfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in order:
        value = obj.get(name)
        if value is None:
            continue
        if name in _DATE_FIELDS and isinstance(value, str):
            value = gson.to_gson_date(value, tz)
        out[name] = value
    for name, value in obj.items():
        if name not in out and name not in order and value is not None:
            out[name] = value
    return out


# --- loading -----------------------------------------------------------------------------------------


def _req_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return value


def _opt_date(obj: dict[str, Any], key: str, tz: tzinfo, default: float | None, where: str) -> float | None:
    if key not in obj:
        return default
    value = obj[key]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a date string or null")
    try:
        return gson.parse_date(value, tz).timestamp()
    except ValueError as exc:
        raise DataError(f"{where}: bad date in '{key}': {value!r}") from exc


def _objects(doc: dict[str, Any], key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The entries of the data file's list ``key``, each an object, with where it stands."""
    for i, obj in enumerate(doc.get(key, [])):
        where = f"{key}[{i}]"
        if not isinstance(obj, dict):
            raise DataError(f"{where} must be an object")
        yield where, obj


def _check_image(image: dict[str, Any], where: str, tz: tzinfo) -> dict[str, Any]:
    _req_str(image, "uuid", where)
    for key in _DATE_FIELDS:
        if isinstance(image.get(key), str):
            try:
                gson.parse_date(image[key], tz)
            except ValueError as exc:
                raise DataError(f"{where}: bad date in '{key}'") from exc
    refs = image.get("backupStorageRefs", [])
    if not isinstance(refs, list):
        raise DataError(f"{where}: 'backupStorageRefs' must be a list")
    for j, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise DataError(f"{where}.backupStorageRefs[{j}] must be an object")
        if "id" in ref and (not isinstance(ref["id"], int) or isinstance(ref["id"], bool)):
            raise DataError(f"{where}.backupStorageRefs[{j}]: 'id' must be an integer")
    return image


def data_from_json(doc: Any, tz: tzinfo, now: float) -> SimData:
    """Build :class:`SimData` from the parsed data-file object (see the module docstring)."""
    if not isinstance(doc, dict):
        raise DataError("the data file must hold a JSON object")
    data = SimData()
    if isinstance(doc.get("managementNodeUuid"), str):
        data.management_node_uuid = doc["managementNodeUuid"]
    for where, a in _objects(doc, "accounts"):
        kind = a.get("type", "")
        if not isinstance(kind, str) or kind not in ("", "SystemAdmin", "Normal"):
            raise DataError(f"{where}: 'type' must be SystemAdmin or Normal")
        account = Account(
            _req_str(a, "uuid", where), _req_str(a, "name", where), _req_str(a, "password", where), kind
        )
        data.accounts[account.uuid] = account
    for where, k in _objects(doc, "accessKeys"):
        key = AccessKey(
            _req_str(k, "id", where), _req_str(k, "secret", where), _req_str(k, "accountUuid", where)
        )
        data.access_keys[key.id] = key
    for where, s in _objects(doc, "sessions"):
        created = _opt_date(s, "createDate", tz, now, where)
        session = Session(
            uuid=_req_str(s, "uuid", where),
            account_uuid=_req_str(s, "accountUuid", where),
            created_at=now if created is None else created,
            expires_at=_opt_date(s, "expiredDate", tz, None, where),
        )
        data.sessions[session.uuid] = session
    for where, image in _objects(doc, "images"):
        checked = _check_image(image, where, tz)
        data.images[checked["uuid"]] = copy.deepcopy(checked)
    for where, v in _objects(doc, "vms"):
        candidates = v.get("candidates", [])
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise DataError(f"{where}: 'candidates' must be a list of image uuids")
        arch = v.get("architecture", "x86_64")
        note = v.get("note", "")
        vm = Vm(
            uuid=_req_str(v, "uuid", where),
            name=str(v.get("name", "")),
            state=_req_str(v, "state", where),
            candidates=list(candidates),
            architecture=arch if isinstance(arch, str) else "x86_64",
            note=note if isinstance(note, str) else "",
            cd_roms=_cd_roms(v, where),
            account_uuid=v.get("accountUuid") if isinstance(v.get("accountUuid"), str) else None,
        )
        data.vms[vm.uuid] = vm
    data.validate()
    return data


def _cd_roms(vm: dict[str, Any], where: str) -> list[CdRom] | None:
    if "cdRoms" not in vm:
        return None
    entries = vm["cdRoms"]
    if not isinstance(entries, list):
        raise DataError(f"{where}: 'cdRoms' must be a list")
    out: list[CdRom] = []
    for j, c in enumerate(entries):
        here = f"{where}.cdRoms[{j}]"
        if not isinstance(c, dict):
            raise DataError(f"{here} must be an object")
        device = c.get("deviceId", j)
        if isinstance(device, bool) or not isinstance(device, int):
            raise DataError(f"{here}: 'deviceId' must be an integer")
        optional = {}
        for key in ("isoUuid", "isoInstallPath", "protocol"):
            value = c.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{here}: '{key}' must be a string or null")
            optional[key] = value
        out.append(
            CdRom(
                _req_str(c, "uuid", here),
                device,
                optional["isoUuid"],
                optional["isoInstallPath"],
                optional["protocol"],
            )
        )
    return out


def load_data(path: str | Path, *, tz: tzinfo | str = "Asia/Shanghai") -> SimData:
    """Load a data file (format in the module docstring). Naive dates are read in ``tz``."""
    zone = resolve_tz(tz)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc
    return data_from_json(doc, zone, datetime.now(zone).timestamp())
