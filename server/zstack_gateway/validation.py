"""Checks a request (GetCandidateIso, AttachIso, DetachIso, GetCandidateVm) before anything goes upstream.

Whatever fails here never reaches ZStack: the caller gets INVALID_ARGUMENT (with one
``google.rpc.BadRequest`` field violation per problem) or UNAUTHENTICATED.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from zstack.v1 import image_service_pb2 as image_svc
from zstack.v1 import vm_instance_service_pb2 as svc

from zstack_gateway import errors

# ZStack UUIDs are 32 hex characters without dashes. ZStack itself makes them lower-case; an
# upper- or mixed-case UUID is accepted and sent lower-case, which is how ZStack's database
# (case-insensitive collation) would match it anyway.
_UUID = re.compile(r"[0-9a-fA-F]{32}")
# A session token after "OAuth": ZStack session UUIDs are 32 hex characters; allow the dashed form
# and other URL-safe tokens a newer ZStack might issue, but nothing that could break a header.
_SESSION = re.compile(r"[A-Za-z0-9._~+/=-]{1,128}")

MAX_TAG_CHARS = 1024
MAX_TAGS = 64
# Tomcat in front of ZStack refuses a request head over 64 KiB; stay well under it.
MAX_ENCODED_QUERY_BYTES = 32 * 1024
# A request_id: what x-request-id accepts (a UUID fits), never anything that could break a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
#: The system tag that picks the CD-ROM an ISO goes to (ZStack's VmSystemTags.CD_ROM, lowercase "cdrom").
CD_ROM_TAG = "cdromUuid::"


@dataclass(frozen=True)
class CandidateIsoQuery:
    """A checked request: what the ZStack client needs, nothing else."""

    vm_instance_uuid: str
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]

    def query_pairs(self) -> list[tuple[str, str]]:
        """Query parameters as ZStack reads lists: the key repeated once per element."""
        return [("systemTags", t) for t in self.system_tags] + [("userTags", t) for t in self.user_tags]


def check_request(request: svc.GetCandidateIsoRequest) -> CandidateIsoQuery:
    """Return the checked request, or raise an INVALID_ARGUMENT GatewayError listing every problem."""
    violations: list[tuple[str, str]] = []
    uuid = request.vm_instance_uuid
    if not uuid:
        violations.append(("vm_instance_uuid", "required: the VM's UUID, 32 hex characters"))
    elif not _UUID.fullmatch(uuid):
        violations.append(
            ("vm_instance_uuid", f"must be 32 hex characters without dashes, got {_describe(uuid)}")
        )
    system_tags = tuple(request.system_tags)
    user_tags = tuple(request.user_tags)
    violations += _check_tags("system_tags", system_tags)
    violations += _check_tags("user_tags", user_tags)
    query = CandidateIsoQuery(uuid.lower(), system_tags, user_tags)
    if not violations:
        encoded = sum(len(quote(k)) + len(quote(v, safe="")) + 2 for k, v in query.query_pairs())
        if encoded > MAX_ENCODED_QUERY_BYTES:
            violations.append(
                ("system_tags", f"tags take {encoded} bytes encoded; at most {MAX_ENCODED_QUERY_BYTES}")
            )
    if violations:
        raise errors.invalid_argument(violations)
    return query


@dataclass(frozen=True)
class AttachIsoQuery:
    """A checked AttachIso request. ``system_tags`` holds the CD-ROM's tag when one was named."""

    vm_instance_uuid: str
    iso_uuid: str
    cd_rom_uuid: str | None
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]
    request_id: str

    def body(self) -> dict[str, list[str]]:
        """The POST body: the tags at its top level, where ZStack reads them (a ``"params"`` key
        would be ignored; the Java SDK's ``"null"`` key works too)."""
        out: dict[str, list[str]] = {}
        if self.system_tags:
            out["systemTags"] = list(self.system_tags)
        if self.user_tags:
            out["userTags"] = list(self.user_tags)
        return out


@dataclass(frozen=True)
class DetachIsoQuery:
    """A checked DetachIso request."""

    vm_instance_uuid: str
    iso_uuid: str | None
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]
    request_id: str

    def query_pairs(self) -> list[tuple[str, str]]:
        """DELETE parameters go in the query string (ZStack ignores a DELETE's body)."""
        pairs = [("isoUuid", self.iso_uuid)] if self.iso_uuid is not None else []
        return (
            pairs + [("systemTags", t) for t in self.system_tags] + [("userTags", t) for t in self.user_tags]
        )


@dataclass(frozen=True)
class CandidateVmQuery:
    """A checked GetCandidateVm request."""

    iso_uuid: str
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]

    def query_pairs(self) -> list[tuple[str, str]]:
        return [("systemTags", t) for t in self.system_tags] + [("userTags", t) for t in self.user_tags]


def _check_uuid(name: str, value: str, what: str, violations: list[tuple[str, str]]) -> str:
    if not value:
        violations.append((name, f"required: {what}, 32 hex characters"))
    elif not _UUID.fullmatch(value):
        violations.append((name, f"must be 32 hex characters without dashes, got {_describe(value)}"))
    return value.lower()


def _check_request_id(value: str, violations: list[tuple[str, str]]) -> str:
    if value and not _REQUEST_ID.fullmatch(value):
        violations.append(
            ("request_id", f"at most 128 letters, digits or ._:/+=- characters, got {_describe(value)}")
        )
    return value


def _check_encoded(pairs: list[tuple[str, str]], violations: list[tuple[str, str]]) -> None:
    encoded = sum(len(quote(k)) + len(quote(v, safe="")) + 2 for k, v in pairs)
    if encoded > MAX_ENCODED_QUERY_BYTES:
        violations.append(
            ("system_tags", f"tags take {encoded} bytes encoded; at most {MAX_ENCODED_QUERY_BYTES}")
        )


def check_attach(request: svc.AttachIsoRequest) -> AttachIsoQuery:
    """Return the checked AttachIso request, or raise an INVALID_ARGUMENT GatewayError."""
    violations: list[tuple[str, str]] = []
    vm = _check_uuid("vm_instance_uuid", request.vm_instance_uuid, "the VM's UUID", violations)
    iso = _check_uuid("iso_uuid", request.iso_uuid, "the ISO image's UUID", violations)
    cd_rom: str | None = None
    if request.HasField("cd_rom_uuid"):
        cd_rom = _check_uuid("cd_rom_uuid", request.cd_rom_uuid, "the CD-ROM's UUID", violations)
    system_tags = tuple(request.system_tags)
    user_tags = tuple(request.user_tags)
    violations += _check_tags("system_tags", system_tags)
    violations += _check_tags("user_tags", user_tags)
    for i, tag in enumerate(system_tags):
        if tag.startswith(CD_ROM_TAG):
            violations.append(
                (f"system_tags[{i}]", "name the CD-ROM with cd_rom_uuid, not a cdromUuid:: tag")
            )
    request_id = _check_request_id(request.request_id, violations)
    if cd_rom is not None:
        system_tags = (f"{CD_ROM_TAG}{cd_rom}", *system_tags)
    query = AttachIsoQuery(vm, iso, cd_rom, system_tags, user_tags, request_id)
    if not violations:
        _check_encoded(
            [("systemTags", t) for t in system_tags] + [("userTags", t) for t in user_tags], violations
        )
    if violations:
        raise errors.invalid_argument(violations)
    return query


def check_detach(request: svc.DetachIsoRequest) -> DetachIsoQuery:
    """Return the checked DetachIso request, or raise an INVALID_ARGUMENT GatewayError."""
    violations: list[tuple[str, str]] = []
    vm = _check_uuid("vm_instance_uuid", request.vm_instance_uuid, "the VM's UUID", violations)
    iso: str | None = None
    if request.HasField("iso_uuid"):
        iso = _check_uuid("iso_uuid", request.iso_uuid, "the ISO image's UUID", violations)
    system_tags = tuple(request.system_tags)
    user_tags = tuple(request.user_tags)
    violations += _check_tags("system_tags", system_tags)
    violations += _check_tags("user_tags", user_tags)
    request_id = _check_request_id(request.request_id, violations)
    query = DetachIsoQuery(vm, iso, system_tags, user_tags, request_id)
    if not violations:
        _check_encoded(query.query_pairs(), violations)
    if violations:
        raise errors.invalid_argument(violations)
    return query


def check_candidate_vms(request: image_svc.GetCandidateVmRequest) -> CandidateVmQuery:
    """Return the checked GetCandidateVm request, or raise an INVALID_ARGUMENT GatewayError."""
    violations: list[tuple[str, str]] = []
    iso = _check_uuid("iso_uuid", request.iso_uuid, "the ISO image's UUID", violations)
    system_tags = tuple(request.system_tags)
    user_tags = tuple(request.user_tags)
    violations += _check_tags("system_tags", system_tags)
    violations += _check_tags("user_tags", user_tags)
    query = CandidateVmQuery(iso, system_tags, user_tags)
    if not violations:
        _check_encoded(query.query_pairs(), violations)
    if violations:
        raise errors.invalid_argument(violations)
    return query


def _check_tags(name: str, tags: Sequence[str]) -> Iterable[tuple[str, str]]:
    if len(tags) > MAX_TAGS:
        yield name, f"at most {MAX_TAGS} tags, got {len(tags)}"
        return
    for i, tag in enumerate(tags):
        if not tag:
            yield f"{name}[{i}]", "must not be empty"
        elif len(tag) > MAX_TAG_CHARS:
            yield f"{name}[{i}]", f"at most {MAX_TAG_CHARS} characters, got {len(tag)}"
        elif not tag.isprintable():
            yield f"{name}[{i}]", "must not contain control characters (newlines, tabs, NUL ...)"


def _describe(value: str, limit: int = 48) -> str:
    """A safe, short description of a bad value for an error message."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return f"{shown!r} ({len(value)} characters)"
