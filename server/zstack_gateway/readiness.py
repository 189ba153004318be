"""Health that follows ZStack: SERVING only while ZStack answers its readiness check.

A background task asks ``GET /zstack/v1/management-nodes/ready`` every ``interval`` seconds and
flips the health status (overall and per service) with hysteresis: ``fall`` failed checks in a row
make it NOT_SERVING, ``rise`` good ones in a row make it SERVING again. A credentials mode that
cannot authenticate (a wrong account password) also makes it NOT_SERVING, and
:attr:`Readiness.account_rejected` holds ZStack's rejection for the ready line. Shutdown stops the
task before health goes NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from zstack_gateway.errors import GatewayError, Reason
from zstack_gateway.telemetry.metrics import Metrics
from zstack_gateway.upstream import ZStackClient

log = logging.getLogger("zstack_gateway.readiness")


class Readiness:
    def __init__(
        self,
        client: ZStackClient,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        rise: int = 2,
        fall: int = 2,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._set_serving = set_serving
        self._interval = interval
        self._timeout = timeout
        self._rise = rise
        self._fall = fall
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None
        self.last_problem: str | None = None
        #: The last check's credentials failure (ZStack answers, but not for the gateway's account).
        self.credentials_error: GatewayError | None = None
        self._streak = 0

    @property
    def account_rejected(self) -> GatewayError | None:
        """ZStack's rejection of the gateway's own account at the last check (a wrong password), or
        None: every call fails with UNAUTHENTICATED (ZSTACK_ACCOUNT_REJECTED) while it lasts."""
        error = self.credentials_error
        return error if error is not None and error.reason == Reason.ZSTACK_ACCOUNT_REJECTED else None

    async def check_once(self) -> str | None:
        """One check: None when ZStack (and the credentials) are fine, else the problem."""
        problem = await self._client.check_ready(self._timeout)
        self.credentials_error = None
        if problem is None:
            self.credentials_error = await self._client.credentials_problem()
            if self.credentials_error is not None:
                problem = self.credentials_error.message
        return problem

    async def start(self) -> None:
        """Check once now (so the first status is real), then keep checking in the background."""
        problem = await self.check_once()
        await self._apply(problem is None, problem, force=True)
        self._task = asyncio.create_task(self._loop(), name="zstack-readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                problem = await self.check_once()
            except Exception as exc:  # a bug here must not stop the checks for good
                log.exception("readiness check failed unexpectedly")
                problem = type(exc).__name__
            await self._apply(problem is None, problem)

    async def _apply(self, ok: bool, problem: str | None, *, force: bool = False) -> None:
        self.last_problem = problem
        if self._metrics is not None:
            self._metrics.zstack_ready.set(1 if ok else 0)
        if force:
            self._streak = 0
            await self._flip(ok)
            return
        if ok == self.serving:
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= (self._rise if ok else self._fall):
            self._streak = 0
            await self._flip(ok)

    async def _flip(self, ok: bool) -> None:
        if ok != self.serving:
            if ok:
                log.info("ZStack is ready: health SERVING")
            elif self.credentials_error is not None:  # ZStack is up, the gateway's credentials are not
                log.warning("health NOT_SERVING: %s", self.last_problem)
            else:
                log.warning("ZStack is not ready: health NOT_SERVING (%s)", self.last_problem)
        self.serving = ok
        await self._set_serving(ok)
