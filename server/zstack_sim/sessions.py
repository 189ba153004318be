"""Login sessions with ZStack's sliding expiry (contract §5.2).

A session expires ``timeout`` seconds after its last use: every successful authenticated call renews
it (``Session.renewSession``), ``/accounts/sessions/{uuid}/valid`` does not. Expired sessions are
deleted when next checked. A session with ``expires_at=None`` is pinned: it never expires by time
(the demo session), but can be expired on demand or logged out.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable

from zstack_sim.data import Account, Session

__all__ = ["SessionStore"]


class SessionStore:
    def __init__(
        self,
        sessions: dict[str, Session],
        clock: Callable[[], float],
        timeout: Callable[[], float],
        max_per_account: Callable[[], int],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._timeout = timeout
        self._max_per_account = max_per_account

    def _expired(self, session: Session, now: float) -> bool:
        return session.expires_at is not None and now > session.expires_at

    def count_for(self, account_uuid: str) -> int:
        now = self._clock()
        return sum(
            1 for s in self._sessions.values() if s.account_uuid == account_uuid and not self._expired(s, now)
        )

    def create(self, account: Account) -> Session | None:
        """A new session for ``account``; ``None`` when the account already has the maximum."""
        if self.count_for(account.uuid) >= self._max_per_account():
            return None
        now = self._clock()
        session = Session(uuidlib.uuid4().hex, account.uuid, now, now + self._timeout())
        self._sessions[session.uuid] = session
        return session

    def check_and_renew(self, session_uuid: str) -> Session | None:
        """The session if valid, with its expiry slid forward; ``None`` (and deleted) otherwise."""
        session = self._sessions.get(session_uuid)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_uuid]
            return None
        if session.expires_at is not None:
            session.expires_at = now + self._timeout()
        return session

    def is_valid(self, session_uuid: str) -> bool:
        session = self._sessions.get(session_uuid)
        return session is not None and not self._expired(session, self._clock())

    def logout(self, session_uuid: str) -> None:
        self._sessions.pop(session_uuid, None)

    def expire(self, session_uuid: str) -> bool:
        """Expire a session now (it stays listed until next checked); False if unknown."""
        session = self._sessions.get(session_uuid)
        if session is None:
            return False
        session.expires_at = self._clock() - 0.001
        return True

    def snapshot(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {
                "uuid": s.uuid,
                "accountUuid": s.account_uuid,
                "createdAt": s.created_at,
                "expiresAt": s.expires_at,
                "valid": not self._expired(s, now),
            }
            for s in self._sessions.values()
        ]
