"""Checks a GetCandidateIso request and its metadata before anything goes upstream.

Whatever fails here never reaches ZStack: the caller gets INVALID_ARGUMENT (with one
``google.rpc.BadRequest`` field violation per problem) or UNAUTHENTICATED.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

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
