"""The time budget of one call, from the caller's gRPC deadline or the configured default."""

from __future__ import annotations

import time
from dataclasses import dataclass

CALLER_DEADLINE_SLACK = 0.1


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock by which the call must be over.

    ``from_caller`` is True when the caller set the deadline, False when it is the gateway's
    default for calls without one.
    """

    expires_at: float
    from_caller: bool

    @classmethod
    def start(cls, time_remaining: float | None, default_timeout: float) -> Deadline:
        if time_remaining is None:
            return cls(time.monotonic() + default_timeout, from_caller=False)
        # grpc ends a call whose deadline passed and cancels its handler, which abandons the upstream
        # request. The gateway's own timer runs a little longer, so that it never races grpc to end
        # the same call (a status sent for a call grpc already ended fails inside grpc).
        return cls(time.monotonic() + max(0.0, time_remaining) + CALLER_DEADLINE_SLACK, from_caller=True)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    @property
    def budget(self) -> float:
        """The remaining time, rounded for messages."""
        return round(self.remaining(), 3)
