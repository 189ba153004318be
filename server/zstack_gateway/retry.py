"""When and how the gateway repeats an upstream call: an explicit policy object.

Only failures that cannot have reached ZStack's business logic are repeated (a refused connection,
a connection closed before any byte of an answer, a proxy's 502/503/504 without a ZStack body,
ZStack's own "not ready" and "management node unavailable"); the classification in
:mod:`zstack_gateway.errors` marks them ``retryable``. Business errors are never repeated. Backoff
is exponential with full jitter, and no retry starts if its backoff would pass the call's deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from zstack_gateway.deadline import Deadline
from zstack_gateway.errors import GatewayError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts the first try: 1 means never retry. ``rng``: the source of the jitter
    (the ``random`` module's by default; a seeded one makes the pauses repeatable)."""

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def backoff(self, retry_number: int) -> float:
        """Full jitter: uniform between 0 and the capped exponential step for this retry (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry_number - 1))
        return (self.rng or random).uniform(0.0, cap)

    async def run(self, attempt: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        """Run ``attempt`` until it succeeds, fails for good, or retrying would pass the deadline."""
        retry_number = 0
        while True:
            try:
                return await attempt()
            except GatewayError as exc:
                retry_number += 1
                if not exc.retryable or retry_number >= self.max_attempts:
                    raise
                pause = self.backoff(retry_number)
                # Leave the retry some time to do its work, not only to start.
                if pause + 0.01 >= deadline.remaining():
                    raise
                await asyncio.sleep(pause)


DEFAULT_RETRY = RetryPolicy()
