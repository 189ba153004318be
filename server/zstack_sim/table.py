"""The data table: what a person can call with the simulator's data, derived from the data itself.

``zstack-sim`` prints it at start (after its ready line), ``zstack-sim --print-table`` prints it and
exits, and ``zstack-gateway --demo`` prints it after its "try it" commands. Every row comes from
:class:`~zstack_sim.data.SimData` (a VM added to the data shows up with what it answers and its
``note``); nothing in it is written by hand.

* accounts (name and password, for the gateway's account mode and the login API);
* access keys (id and secret, for the AccessKey mode);
* sessions (for pass-through callers' ``authorization: OAuth <uuid>``): valid or expired;
* VMs: what ``GetCandidateIso`` with that ``vmInstanceUuid`` answers (the images, an empty list, or
  NOT_FOUND for a uuid that is not in the data), and their CD-ROMs (what AttachIso fills);
* ISOs: the images whose media type is ISO, and the VMs ``GetCandidateVm`` lists for each.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from datetime import datetime, tzinfo

from zstack_sim.data import LISTING_STATES, SimData, Vm

__all__ = ["MISSING_VM_NOTE", "TITLE", "cd_roms_shown", "render", "vm_shows"]

#: The line before the table where a program prints it with other output.
TITLE = "the data (zstack-sim --print-table prints it alone):"

#: How many image names a VM's row names before "...".
NAMES_SHOWN = 3
MISSING_VM_NOTE = "NOT_FOUND (ZStack SYS.1003), as for any uuid not in the data"


def vm_shows(data: SimData, vm: Vm) -> str:
    """What an iso-candidates call for ``vm`` answers, in a few words."""
    listed = vm.listed_candidates()
    if not listed:
        if vm.candidates:  # configured, but not listed in this state
            return f"no images (ZStack lists candidates only for a {' or '.join(LISTING_STATES)} VM)"
        return "no images (an empty list)"
    names = [str(data.images[uuid].get("name", uuid)) for uuid in listed[:NAMES_SHOWN]]
    more = ", ..." if len(listed) > NAMES_SHOWN else ""
    count = f"{len(listed)} image" + ("s" if len(listed) != 1 else "")
    return f"{count}: {', '.join(names)}{more}"


def cd_roms_shown(data: SimData, vm: Vm) -> str:
    """The VM's CD-ROMs in a few words: which are empty, which hold which ISO."""
    held = []
    for cd in vm.drives:
        if cd.iso_uuid:
            held.append(
                f"CD-ROM {cd.device_id} holds {data.images.get(cd.iso_uuid, {}).get('name', cd.iso_uuid)}"
            )
    empty = sum(1 for cd in vm.drives if not cd.iso_uuid)
    if empty:
        held.append(f"{empty} CD-ROM{'s' if empty != 1 else ''} empty")
    return "; ".join(held) or "no CD-ROM"


def _session_state(expires_at: float | None, now: float, tz: tzinfo) -> str:
    if expires_at is None:
        return "valid, never expires by time"
    if expires_at < now:
        return "expired (calls get UNAUTHENTICATED, ZStack ID.1001)"
    until = datetime.fromtimestamp(expires_at, tz).isoformat(timespec="seconds")
    return f"valid until {until} (each call renews it)"


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _columns(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        indent
        + "  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]


def render(
    data: SimData,
    tz: tzinfo,
    *,
    missing_vm: str | None = None,
    latency_ms: float = 0.0,
    now: float | None = None,
) -> str:
    """The table as text lines (no trailing newline). ``missing_vm``: a uuid not in the data, shown
    as the NOT_FOUND example (skipped if the data has it)."""
    now = time.time() if now is None else now
    names = {a.uuid: a.name for a in data.accounts.values()}
    out: list[str] = []
    if data.accounts:
        out.append("accounts (name, password):")
        out += _columns([(a.name, a.password, f"uuid {a.uuid}") for a in data.accounts.values()])
    if data.access_keys:
        out.append("access keys (id, secret):")
        out += _columns(
            [(k.id, k.secret, f"account {names[k.account_uuid]}") for k in data.access_keys.values()]
        )
    if data.sessions:
        out.append("sessions (authorization: OAuth <uuid>; any other uuid: UNAUTHENTICATED, ZStack ID.1001):")
        out += _columns(
            [
                (s.uuid, f"account {names[s.account_uuid]}", _session_state(s.expires_at, now, tz))
                for s in data.sessions.values()
            ]
        )
    vm_rows = [(vm.uuid, vm.name or "-", vm.state, vm_shows(data, vm)) for vm in data.vms.values()]
    if missing_vm is not None and data.find_vm(missing_vm) is None:
        vm_rows.append((missing_vm, "(not in the data)", "-", MISSING_VM_NOTE))
    if vm_rows:
        slow = f"; every answer {latency_ms:g} ms late (--latency-ms)" if latency_ms > 0 else ""
        out.append(f"VMs (GetCandidateIso's vmInstanceUuid, and what the call answers{slow}):")
        out += _columns(vm_rows)
        out.append("CD-ROMs (AttachIso fills an empty one, or the one named by cd_rom_uuid):")
        out += _columns([(vm.uuid, cd_roms_shown(data, vm)) for vm in data.vms.values()])
        notes = [(vm.uuid, vm.note) for vm in data.vms.values() if vm.note]
        if notes:
            out.append("about the VMs:")
            out += _columns(notes)
    isos = [(uuid, image) for uuid, image in data.images.items() if image.get("mediaType") == "ISO"]
    if isos:
        out.append("ISOs (GetCandidateVm's isoUuid and AttachIso's isoUuid; what GetCandidateVm lists):")
        rows = []
        for uuid, image in isos:
            vms = [vm.name or vm.uuid for vm in data.candidate_vms(uuid)]
            listed = f"{len(vms)} VM{'s' if len(vms) != 1 else ''}" + (f": {', '.join(vms)}" if vms else "")
            rows.append((uuid, str(image.get("name", "-")), listed))
        out += _columns(rows)
    return "\n".join(out)
