"""The coalescer on its own, in milliseconds: who waits, who leaves, who starts the work again.

The work here is a real coroutine on a real event loop (it stands for the upstream request); the
end-to-end behaviour through grpc is covered in test_call_lifecycle.py and test_policies.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from zstack_gateway.coalesce import Coalescer
from zstack_gateway.deadline import Deadline
from zstack_gateway.errors import GatewayError, deadline_exceeded


def deadline(seconds: float = 5.0) -> Deadline:
    return Deadline.start(seconds, 0)


class Work:
    """Counts its starts; each run waits ``delay`` and returns its run number, or raises what
    ``fails(run number)`` gives (None: no failure). ``wind_down``: how long a cancelled run takes to
    end (an upstream request being torn down)."""

    def __init__(
        self,
        delay: float = 0.05,
        wind_down: float = 0.0,
        fails: Callable[[int], BaseException | None] = lambda run: None,
    ) -> None:
        self.delay = delay
        self.wind_down = wind_down
        self.fails = fails
        self.starts = 0

    async def __call__(self) -> int:
        self.starts += 1
        run = self.starts
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            if self.wind_down:
                await asyncio.sleep(self.wind_down)
            raise
        failure = self.fails(run)
        if failure is not None:
            raise failure
        return run


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_identical_calls_share_one_run():
    async def main():
        c: Coalescer[int] = Coalescer()
        work = Work()
        results = await asyncio.gather(*(c.run("k", work, deadline()) for _ in range(10)))
        return results, work.starts

    assert run(main()) == ([1] * 10, 1)


@pytest.mark.parametrize("wind_down", [0.0, 0.05])
def test_a_caller_joining_work_that_everyone_else_abandoned_gets_its_own_result(wind_down):
    """A leaves (the work is cancelled); B asks for the same key before the cancelled work has
    ended. B must not inherit A's cancellation: it gets a result of its own."""

    async def main():
        c: Coalescer[int] = Coalescer()
        work = Work(delay=0.1, wind_down=wind_down)
        a = asyncio.ensure_future(c.run("k", work, deadline()))
        await asyncio.sleep(0.01)
        a.cancel()
        await asyncio.sleep(0)  # A's leaving runs: the shared work is cancelled, not yet ended
        b = await c.run("k", work, deadline())
        return b, a.cancelled(), work.starts

    assert run(main()) == (2, True, 2)


def test_one_caller_cancelling_never_ends_another_callers_call():
    async def main():
        c: Coalescer[int] = Coalescer()
        work = Work(delay=0.1)
        callers = [asyncio.ensure_future(c.run("k", work, deadline())) for _ in range(5)]
        await asyncio.sleep(0.01)
        for t in callers[:4]:
            t.cancel()
        return await callers[4], work.starts

    assert run(main()) == (1, 1)


def test_work_is_abandoned_once_every_caller_left():
    async def main():
        c: Coalescer[int] = Coalescer()
        ended = asyncio.Event()

        async def work() -> int:
            try:
                await asyncio.sleep(10)
            finally:
                ended.set()
            return 0

        callers = [asyncio.ensure_future(c.run("k", work, deadline())) for _ in range(3)]
        await asyncio.sleep(0.01)
        for t in callers:
            t.cancel()
        await asyncio.wait_for(ended.wait(), 1)
        return ended.is_set()

    assert run(main())


def test_a_shared_run_that_ran_out_on_an_earlier_deadline_is_started_again_for_a_later_one():
    async def main():
        c: Coalescer[int] = Coalescer()
        work = Work(fails=lambda run: deadline_exceeded(0.05, caller_deadline=True) if run == 1 else None)
        short = asyncio.ensure_future(c.run("k", work, deadline(0.05)))
        await asyncio.sleep(0.01)
        long = asyncio.ensure_future(c.run("k", work, deadline(5)))
        with pytest.raises(GatewayError) as info:
            await short
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        return await long

    assert run(main()) == 2


def test_errors_are_shared_like_results():
    async def main():
        c: Coalescer[int] = Coalescer()
        work = Work(delay=0.02, fails=lambda run: ValueError("boom"))
        results = await asyncio.gather(
            *(c.run("k", work, deadline()) for _ in range(4)), return_exceptions=True
        )
        return [type(r).__name__ for r in results], work.starts

    assert run(main()) == (["ValueError"] * 4, 1)


def test_switched_off_every_call_runs_alone():
    async def main():
        c: Coalescer[int] = Coalescer(enabled=False)
        work = Work()
        results = await asyncio.gather(*(c.run("k", work, deadline()) for _ in range(3)))
        return sorted(results), work.starts

    assert run(main()) == ([1, 2, 3], 3)
