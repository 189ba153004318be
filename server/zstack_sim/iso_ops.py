"""Attach and detach an ISO, and the candidate VMs of an ISO, as ZStack does them (iso-workflow §3-5).

Attach and detach run inside a job (see :mod:`zstack_sim.jobs`): every error, a missing VM and a bad
session included, reaches the client only through the job's poll, as 503 ``{"error": ...}``, in
ZStack's order:

1. parameter validation: the resources exist (attach: ``isoUuid`` before ``vmInstanceUuid``, the
   computed HashMap order; detach: only the VM) - SYS.1003;
2. the session (or the AccessKey) - ID.1001 / ID.1000;
3. the interceptor's checks (attach: the ISO already on the VM, the media type, the CD-ROM tag;
   detach: several ISOs and no ``isoUuid``);
4. in the VM's queue: the state (Running, Stopped, Paused; else SYS.1006 caused by VM.1010), then
   the attach itself (a free CD-ROM, the ISO on a backup storage for a running VM).

The account check (ID.1002) applies to Normal accounts only and looks at the VM's owner (an ISO
shared to public is exempt, and the simulator takes every ISO as shared).

Simplifications [INF]: details are in English (a zh_CN server translates some of them); a VM deleted
meanwhile (SYS.1000) and the storage compatibility check are not simulated (the simulator has no
storage).
"""

from __future__ import annotations

from collections.abc import Callable

from zstack_sim.data import CdRom, Vm
from zstack_sim.replies import Reply, error_code, json_reply, zstack_error
from zstack_sim.state import SimState

__all__ = ["ATTACH_MSG", "DETACH_MSG", "attach_iso", "candidate_vms", "detach_iso"]

ATTACH_MSG = "org.zstack.header.vm.AttachIsoToVmInstanceMsg"
DETACH_MSG = "org.zstack.header.vm.APIDetachIsoFromVmInstanceMsg"
#: The order ZStack's HashSet prints the allowed states in (computed, iso-workflow §3 row 9).
_ALLOWED_STATES = ("Stopped", "Running", "Paused")
_CDROM_TAG = "cdromUuid::"

#: The session (or AccessKey) check, then the account check of the VM: a refusal, or None.
CheckCredentials = Callable[[Vm], Reply | None]


def _not_found(field: str, uuid: str, kind: str, cost_ms: int) -> Reply:
    return zstack_error(
        "SYS.1003", f"invalid field[{field}], resource[uuid:{uuid}, type:{kind}] not found", cost_ms=cost_ms
    )


def _failed(details: str, cost_ms: int, cause: dict[str, object] | None = None) -> Reply:
    return zstack_error("SYS.1006", details, cost_ms=cost_ms, cause=cause)


def _state_refused(vm: Vm, message: str, cost_ms: int) -> Reply:
    details = (
        f"current vm instance state[{vm.state}] doesn't allow to proceed message[{message}], "
        f"allowed states are [{', '.join(_ALLOWED_STATES)}]"
    )
    return _failed(details, cost_ms, error_code("VM.1010", details))


def _cd_rom_tag(system_tags: object) -> str | None:
    """The CD-ROM named by a ``cdromUuid::<uuid>`` system tag; an empty uuid does not match the
    tag's pattern, so it counts as absent (``TagUtils.isMatch``)."""
    if not isinstance(system_tags, list):
        return None
    for tag in system_tags:
        if isinstance(tag, str) and tag.startswith(_CDROM_TAG) and len(tag) > len(_CDROM_TAG):
            return tag[len(_CDROM_TAG) :]
    return None


def _find_cd_rom(state: SimState, uuid: str) -> tuple[Vm, CdRom] | None:
    for vm in state.data.vms.values():
        for cd in vm.drives:
            if cd.uuid == uuid:
                return vm, cd
    return None


def _vm_reply(state: SimState, vm: Vm) -> Reply:
    return json_reply(200, {"inventory": state.vm_json(vm)})


def attach_iso(
    state: SimState,
    vm_uuid: str,
    iso_uuid: str,
    system_tags: object,
    check_credentials: CheckCredentials,
    cost_ms: int = 0,
) -> Reply:
    """``AttachIsoToVmInstance`` from its checks to its answer; applies the change on success."""
    image = state.data.images.get(iso_uuid)
    if image is None:
        return _not_found("isoUuid", iso_uuid, "ImageVO", cost_ms)
    vm = state.data.find_vm(vm_uuid)
    if vm is None:
        return _not_found("vmInstanceUuid", vm_uuid, "VmInstanceVO", cost_ms)
    refused = check_credentials(vm)
    if refused is not None:
        return refused
    if any(cd.iso_uuid == iso_uuid for cd in vm.drives):
        return _failed(f"VM[uuid:{vm.uuid}] already has an ISO[uuid:{iso_uuid}] attached", cost_ms)
    media = image.get("mediaType")
    if media != "ISO":
        return zstack_error(
            "SYS.1007", f"Unsupported Image Media Type: [{media if media else 'null'}] ", cost_ms=cost_ms
        )
    tagged = _cd_rom_tag(system_tags)
    target: CdRom | None = None
    if tagged is not None:
        found = _find_cd_rom(state, tagged)
        if found is None:
            return _failed(f"The cdRom[uuid:{tagged}] does not exist", cost_ms)
        # ZStack does not check that the CD-ROM belongs to this VM [SRC validateCdRomUuid].
        target = found[1]
        if target.iso_uuid is not None:
            return _failed(f"VM[uuid:{vm.uuid}] cdRom[uuid:{tagged}] has mounted the ISO", cost_ms)
    if vm.state not in _ALLOWED_STATES:
        return _state_refused(vm, ATTACH_MSG, cost_ms)
    if target is None:
        target = next((cd for cd in vm.drives if cd.iso_uuid is None), None)
        if target is None:
            return _failed(f"All vm[uuid:{vm.uuid}] CD-ROMs have mounted ISO", cost_ms)
    running = vm.state in ("Running", "Paused")
    if running and not image.get("backupStorageRefs"):
        return _failed(
            f"cannot find the iso[uuid:{iso_uuid}] in any connected backup storage attached to the "
            f"zone[uuid:{state.zone_uuid}]. check below:\n",
            cost_ms,
        )
    target.iso_uuid = iso_uuid
    if running:
        # [INF] the path and protocol of an ISO downloaded to local primary storage.
        target.iso_install_path = f"/zstack_ps/imagecache/iso/{iso_uuid}/{iso_uuid}.iso"
        target.protocol = "file"
    target.last_op_at = state.now()
    return _vm_reply(state, vm)


def detach_iso(
    state: SimState,
    vm_uuid: str,
    iso_uuid: str | None,
    check_credentials: CheckCredentials,
    cost_ms: int = 0,
) -> Reply:
    """``DetachIsoFromVmInstance``: idempotent; detaching what is not attached changes nothing."""
    vm = state.data.find_vm(vm_uuid)
    if vm is None:
        return _not_found("vmInstanceUuid", vm_uuid, "VmInstanceVO", cost_ms)
    refused = check_credentials(vm)
    if refused is not None:
        return refused
    attached = [cd for cd in vm.drives if cd.iso_uuid is not None]
    if iso_uuid is None:
        if len(attached) > 1:
            return _failed(
                f"VM[uuid:{vm.uuid}] has multiple ISOs attached, specify the isoUuid when detaching", cost_ms
            )
        if attached:
            iso_uuid = attached[0].iso_uuid
    if vm.state not in _ALLOWED_STATES:
        return _state_refused(vm, DETACH_MSG, cost_ms)
    for cd in attached:
        if iso_uuid and cd.iso_uuid == iso_uuid:
            # ZStack clears the ISO and its path but keeps the protocol [SRC detachIso].
            cd.iso_uuid = None
            cd.iso_install_path = None
            cd.last_op_at = state.now()
    return _vm_reply(state, vm)


def candidate_vms(state: SimState, iso_uuid: str) -> list[Vm]:
    """The VMs GetCandidateVmForAttachingIso lists for ``iso_uuid`` (see SimData.candidate_vms)."""
    return state.data.candidate_vms(iso_uuid)
