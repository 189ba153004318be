"""How a call authenticates to ZStack: exactly one mode is active per gateway.

* :class:`PassThrough` (the default): the caller's ``authorization: OAuth <session-uuid>`` metadata
  goes to ZStack unchanged; a call without it is refused before anything goes upstream.

Every mode turns the caller's metadata into a :class:`CallerAuth` (checked before any upstream call),
gives the headers of each upstream request, and may refresh its credentials once when ZStack says the
session is invalid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from zstack_gateway import validation
from zstack_gateway.errors import SESSION_GLOBAL_CODES, GatewayError

Metadata = Iterable[tuple[str, str | bytes]] | None


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
        """Check the caller's metadata; raise an UNAUTHENTICATED GatewayError when it cannot call."""
        ...

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        """Headers for one upstream request. ``api_path`` is ZStack's path without the ``/zstack``
        context and without the query, e.g. ``/v1/vm-instances/<uuid>/iso-candidates``."""
        ...

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        """ZStack said the session is invalid: return True when new credentials are in place and the
        call should be tried once more."""
        ...

    async def close(self) -> None:
        """Release what the mode holds (e.g. log a session out)."""
        ...


def digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


class PassThrough:
    """The caller's own ZStack session, passed through unchanged."""

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        authorization = validation.session_authorization(metadata)
        return CallerAuth(identity=digest("session", authorization), authorization=authorization)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        assert caller.authorization is not None
        return {"Authorization": caller.authorization}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        return False  # the caller owns the session; only the caller can get a new one

    async def close(self) -> None:
        return None


def is_invalid_session(error: GatewayError) -> bool:
    """ZStack's "session invalid or expired", in its classic and its newer global-code forms."""
    return error.zstack_code == "ID.1001" or error.error_code.global_error_code in SESSION_GLOBAL_CODES
