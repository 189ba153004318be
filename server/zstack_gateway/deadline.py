"""The time budget of one call, from the caller's gRPC deadline or the configured default."""

from __future__ import annotations

import time
from dataclasses import dataclass


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
        return cls(time.monotonic() + max(0.0, time_remaining), from_caller=True)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    @property
    def budget(self) -> float:
        """The remaining time, rounded for messages."""
        return round(self.remaining(), 3)
