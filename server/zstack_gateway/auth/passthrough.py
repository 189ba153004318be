"""Pass-through mode (the default): the caller's own ZStack session goes to ZStack unchanged.

The caller sends ``authorization: OAuth <session-uuid>`` (a session from ZStack's login); a call
without one is refused before anything goes upstream. Calls with different sessions never share an
upstream request (their identities differ).
"""

from __future__ import annotations

import re

from zstack_gateway import errors
from zstack_gateway.auth.base import CallerAuth, Metadata, authorizations, digest
from zstack_gateway.errors import GatewayError

# A ZStack session uuid as callers send it (ZStack's are 32 hex; proxies' tests use others).
_SESSION = re.compile(r"[A-Za-z0-9-]{1,128}")


def session_authorization(metadata: Metadata) -> str:
    """The ``Authorization`` header value to send to ZStack, from the caller's ``authorization``
    metadata (``OAuth <session-uuid>``). Raises UNAUTHENTICATED when it is missing or malformed."""
    values = authorizations(metadata)
    if not values:
        raise errors.unauthenticated(
            "no credentials: send metadata 'authorization: OAuth <session-uuid>' "
            "(a ZStack session from PUT /zstack/v1/accounts/login)"
        )
    if len(values) > 1:
        raise errors.unauthenticated("send exactly one 'authorization' metadata entry")
    value = values[0]
    if isinstance(value, bytes):
        raise errors.unauthenticated("'authorization' metadata must be text, not binary")
    token = value.credentials
    if value.scheme != "oauth":
        raise errors.unauthenticated(
            "'authorization' must be 'OAuth <session-uuid>'; other schemes are not accepted"
        )
    if not _SESSION.fullmatch(token):
        raise errors.unauthenticated(
            "'authorization' must be 'OAuth <session-uuid>': the session is missing or malformed"
        )
    return f"OAuth {token}"


class PassThrough:
    """The caller's own ZStack session, passed through unchanged."""

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        authorization = session_authorization(metadata)
        return CallerAuth(identity=digest("session", authorization), authorization=authorization)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        assert caller.authorization is not None
        return {"Authorization": caller.authorization}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        return False  # the caller owns the session; only the caller can get a new one

    async def problem(self) -> GatewayError | None:
        return None  # each caller brings its own session

    async def close(self) -> None:
        return None
