"""Fan-in coalescing: identical calls in flight at the same time share one upstream request.

Calls are identical when they act as the same identity (see credentials.CallerAuth.identity: never
across different credentials) and ask for the same VM with the same tags. The first call starts the
shared work in a task of its own; later ones wait on it. Errors are shared like results.

What one caller does never decides another caller's outcome:

* A waiter that is cancelled leaves; the others keep waiting. The shared work is cancelled only when
  every waiter has left, and at that moment it stops being joinable: a caller arriving afterwards
  starts fresh work instead of joining work that is being torn down.
* A waiter whose shared work ended cancelled although the waiter itself was not cancelled (the work
  was abandoned just as it joined) starts the work again for itself.
* A shared call that ran out of time on its first caller's deadline is not a verdict for a caller
  whose deadline is later: that caller starts a fresh call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from zstack_gateway.deadline import Deadline
from zstack_gateway.errors import GatewayError
from zstack_gateway.telemetry import calls

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    deadline: Deadline
    waiters: int = 0


@dataclass
class Coalescer(Generic[T]):
    """Shares in-flight work by key. ``enabled=False`` runs every call on its own."""

    enabled: bool = True
    _flights: dict[Hashable, _Flight[T]] = field(default_factory=dict)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        if not self.enabled:
            return await work()
        while True:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._start(key, work, deadline)
            else:
                record = calls.current.get()
                if record is not None:
                    record.coalesced = True
            try:
                return await self._wait(key, flight)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # this caller was cancelled: it leaves
                continue  # the shared work was abandoned by the others just as this caller joined
            except GatewayError as exc:
                ran_out = exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
                if ran_out and flight.deadline.expires_at < deadline.expires_at and deadline.remaining() > 0:
                    continue  # another caller's deadline ended the shared call; this one has time left
                raise

    def _start(self, key: Hashable, work: Callable[[], Awaitable[T]], deadline: Deadline) -> _Flight[T]:
        task = asyncio.ensure_future(work())
        flight = _Flight(task, deadline)
        self._flights[key] = flight

        def forget(done: asyncio.Task[T]) -> None:
            self._forget(key, flight)
            if not done.cancelled():
                done.exception()  # retrieved here, so a result nobody waits for is not reported

        task.add_done_callback(forget)
        return flight

    def _forget(self, key: Hashable, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _wait(self, key: Hashable, flight: _Flight[T]) -> T:
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Every caller left: abandon the upstream request, and let nobody join it any more.
                self._forget(key, flight)
                flight.task.cancel()
                # Let the request wind down (it records its outcome on the call) before the caller's
                # call is logged; aiohttp gives up a request at once.
                await asyncio.wait((flight.task,), timeout=1.0)


def _being_cancelled() -> bool:
    """True when the current task has been asked to cancel (its caller went away)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
