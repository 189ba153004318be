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

:meth:`Coalescer.share` hands the callers the work's value as soon as the work :func:`publish`-es it
(GetCandidateIso: the image stream, once ZStack's headers are in), while the work goes on (reading the
body); callers may still join until it ends. Each caller then holds the work until it calls the
release it was given; when the last one releases before the work ends, the work is abandoned. Once
published, the work no longer ends on its first caller's deadline alone: the callers holding the
value push its time limit to the latest of their deadlines (stream.ImageStream.hold_for).
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from zstack_gateway.deadline import Deadline
from zstack_gateway.errors import GatewayError
from zstack_gateway.telemetry import calls

T = TypeVar("T")


#: In a task running shared work: the future its published value goes to.
_published: contextvars.ContextVar[asyncio.Future[Any] | None] = contextvars.ContextVar(
    "coalesce_published", default=None
)

#: What releases a caller's hold on shared work (see Coalescer.share).
Release = Callable[[], Awaitable[None]]


def publish(value: object) -> None:
    """Hand ``value`` to the callers of :meth:`Coalescer.share` waiting on the shared work this task
    runs, before the work ends; nothing outside shared work."""
    published = _published.get()
    if published is not None and not published.done():
        published.set_result(value)


@dataclass(eq=False)
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    deadline: Deadline
    waiters: int = 0
    published: asyncio.Future[T] | None = None


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

    async def share(
        self, key: Hashable, work: Callable[[], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, Release]:
        """As :meth:`run`, but the value comes as soon as the work publishes it (or when it ends), with
        the release the caller must await once done with it, however its call ends. Work is always
        run in a task of its own (with ``enabled=False``, one nobody else joins)."""
        while True:
            flight = self._flights.get(key) if self.enabled else None
            if flight is None:
                flight = self._start(key if self.enabled else object(), work, deadline, publishing=True)
            else:
                record = calls.current.get()
                if record is not None:
                    record.coalesced = True
            flight.waiters += 1
            try:
                value = await self._first(flight)
            except asyncio.CancelledError:
                await self._leave(flight)
                if _being_cancelled():
                    raise  # this caller was cancelled: it leaves
                continue  # the shared work was abandoned by the others just as this caller joined
            except GatewayError as exc:
                await self._leave(flight)
                ran_out = exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
                if ran_out and flight.deadline.expires_at < deadline.expires_at and deadline.remaining() > 0:
                    continue  # another caller's deadline ended the shared call; this one has time left
                raise
            except BaseException:
                await self._leave(flight)
                raise
            return value, self._release(flight)

    def _release(self, flight: _Flight[T]) -> Release:
        # Held weakly: a caller reading the value must not keep the ended work's task alive.
        held = weakref.ref(flight)

        async def release() -> None:
            flight = held()
            if flight is not None:
                await self._leave(flight)

        return release

    async def _first(self, flight: _Flight[T]) -> T:
        """The published value, or the work's result."""
        published, task = flight.published, flight.task
        assert published is not None
        if not published.done() and not task.done():
            # A future of this caller's own (cancelling it touches no one else), done as soon as
            # either is: the caller runs in the loop's next turn.
            mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(_: object) -> None:
                if not mine.done():
                    mine.set_result(None)

            published.add_done_callback(wake)
            task.add_done_callback(wake)
            try:
                await mine
            finally:
                published.remove_done_callback(wake)
                task.remove_done_callback(wake)
        if published.done() and not published.cancelled():
            return published.result()
        return task.result()

    async def _leave(self, flight: _Flight[T]) -> None:
        flight.waiters -= 1
        if flight.waiters == 0 and not flight.task.done():
            # Every caller left: abandon the upstream request, and let nobody join it any more.
            for key, registered in list(self._flights.items()):
                if registered is flight:
                    del self._flights[key]
            flight.task.cancel()
            await asyncio.wait((flight.task,), timeout=1.0)

    def _start(
        self, key: Hashable, work: Callable[[], Awaitable[T]], deadline: Deadline, *, publishing: bool = False
    ) -> _Flight[T]:
        published: asyncio.Future[T] | None = None
        if publishing:
            published = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(_publishing(work, published))
        else:
            task = asyncio.ensure_future(work())
        flight = _Flight(task, deadline, published=published)
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


async def _publishing(work: Callable[[], Awaitable[T]], published: asyncio.Future[T]) -> T:
    """``work``, in its own task, where :func:`publish` hands a value to ``published``."""
    _published.set(published)
    try:
        return await work()
    finally:
        if not published.done():
            published.cancel()  # nothing published: the callers take the work's result


def _being_cancelled() -> bool:
    """True when the current task has been asked to cancel (its caller went away)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
