"""What every authentication mode shares: the caller's ``authorization`` metadata read one way,
the :class:`CallerAuth` a call acts as, and the :class:`Credentials` protocol a mode implements."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from zstack_gateway import errors
from zstack_gateway.errors import SESSION_GLOBAL_CODES, GatewayError

Metadata = Iterable[tuple[str, str | bytes]] | None


@dataclass(frozen=True)
class Authorization:
    """One ``authorization`` metadata entry: its scheme (lowercase) and what follows it."""

    scheme: str
    credentials: str


def authorizations(metadata: Metadata) -> list[Authorization | bytes]:
    """Every ``authorization`` entry of the caller's metadata, parsed (``Scheme credentials``, white
    space around either ignored); a binary value stays bytes, for the caller to refuse."""
    found: list[Authorization | bytes] = []
    for key, value in metadata or ():
        if key != "authorization":
            continue
        if isinstance(value, bytes):
            found.append(value)
            continue
        scheme, _, credentials = value.strip().partition(" ")
        found.append(Authorization(scheme.lower(), credentials.strip()))
    return found


@dataclass(frozen=True)
class CallerAuth:
    """What a call acts as. ``identity`` separates callers for request coalescing: calls share an
    upstream request only when their identities are equal. It is a digest, never a secret."""

    identity: str
    authorization: str | None = None

    def __repr__(self) -> str:  # never show a session in logs or tracebacks
        return f"CallerAuth(identity={self.identity[:12]}...)"


class Credentials(Protocol):
    """One authentication mode."""

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        """Check the caller's metadata; raise a GatewayError (UNAUTHENTICATED, or INVALID_ARGUMENT for
        metadata this mode does not take) when it cannot call."""
        ...

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        """Headers for one upstream request. ``api_path`` is ZStack's path without the ``/zstack``
        context and without the query, e.g. ``/v1/vm-instances/<uuid>/iso-candidates``."""
        ...

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        """ZStack said the session is invalid: return True when new credentials are in place and the
        call should be tried once more."""
        ...

    async def problem(self) -> GatewayError | None:
        """Why this mode cannot authenticate right now (e.g. ZStack rejected the account: its
        ``reason`` is ``ZSTACK_ACCOUNT_REJECTED``), as the error a call would get, or None. May talk
        to ZStack (account mode logs in when it holds no session); never raises."""
        ...

    async def close(self) -> None:
        """Release what the mode holds (e.g. log a session out)."""
        ...


def digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


def is_invalid_session(error: GatewayError) -> bool:
    """ZStack's "session invalid or expired", in its classic and its newer global-code forms."""
    return error.zstack_code == "ID.1001" or error.error_code.global_error_code in SESSION_GLOBAL_CODES


def refuse_zstack_credentials(metadata: Metadata, acts_as: str, mode: str) -> None:
    """In the modes that hold credentials: refuse a caller that sends its own ZStack credentials."""
    for entry in authorizations(metadata):
        if isinstance(entry, Authorization) and entry.scheme in ("oauth", "zstack"):
            shown = "OAuth" if entry.scheme == "oauth" else "ZStack"
            raise errors.caller_zstack_credentials_refused(shown, acts_as, mode)
