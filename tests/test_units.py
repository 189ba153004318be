"""Fast tests of single pieces, in milliseconds: the retry policy, the interceptor order, the seams
that let the ZStack client and the account login use a given HTTP session.

The end-to-end tests (real gateway, simulator, grpc channels) stay; these pin the pieces' own rules.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import grpc
import pytest
from aiohttp import web
from zstack_gateway import errors, interceptors
from zstack_gateway.auth import PassThrough
from zstack_gateway.auth.account import AccountLogin
from zstack_gateway.deadline import Deadline
from zstack_gateway.retry import RetryPolicy
from zstack_gateway.settings import Secret
from zstack_gateway.upstream import ZStackClient
from zstack_gateway.validation import CandidateIsoQuery

# ---------------------------------------------------------------------------------------------
# The retry policy


class Attempts:
    """An attempt that fails with ``failures`` (in order), then returns its number of calls."""

    def __init__(self, *failures: errors.GatewayError) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.calls


def retryable() -> errors.GatewayError:
    return errors.unavailable("refused", retryable=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def fast(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.002)


def test_retryable_failures_are_retried_until_success():
    attempt = Attempts(retryable(), retryable())
    assert run(fast().run(attempt, Deadline.start(5, 5))) == 3


def test_retries_stop_at_max_attempts():
    attempt = Attempts(retryable(), retryable(), retryable(), retryable())
    with pytest.raises(errors.GatewayError):
        run(fast(3).run(attempt, Deadline.start(5, 5)))
    assert attempt.calls == 3


@pytest.mark.parametrize(
    "failure",
    [
        errors.unavailable("broke midway", retryable=False),
        errors.from_zstack_error(errors.error_code_from_json({"code": "SYS.1003"}), 503, deadline_sent=False),
        errors.bad_response("not JSON"),
    ],
    ids=["transport-not-retryable", "business-error", "bad-response"],
)
def test_failures_that_may_have_reached_zstack_are_never_retried(failure):
    attempt = Attempts(failure)
    with pytest.raises(errors.GatewayError) as info:
        run(fast(5).run(attempt, Deadline.start(5, 5)))
    assert info.value is failure
    assert attempt.calls == 1


def test_no_retry_starts_when_its_pause_would_pass_the_deadline():
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=1.0, rng=random.Random(1))
    attempt = Attempts(retryable(), retryable())
    started = time.monotonic()
    with pytest.raises(errors.GatewayError):
        run(policy.run(attempt, Deadline.start(0.05, 5)))
    assert attempt.calls <= 2
    assert time.monotonic() - started < 1.0


def test_backoff_is_full_jitter_under_a_capped_exponential():
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=1.0, multiplier=2.0, rng=random.Random(7))
    for retry in range(1, 10):
        cap = min(1.0, 0.05 * 2 ** (retry - 1))
        pauses = [policy.backoff(retry) for _ in range(200)]
        assert all(0.0 <= p <= cap for p in pauses)
        assert max(pauses) > cap * 0.8  # the whole range is used, not a fixed step


def test_a_seeded_policy_repeats_its_pauses():
    first = RetryPolicy(rng=random.Random(3))
    second = RetryPolicy(rng=random.Random(3))
    assert [first.backoff(n) for n in range(1, 6)] == [second.backoff(n) for n in range(1, 6)]


# ---------------------------------------------------------------------------------------------
# The drain


def test_the_drain_is_idle_only_when_no_call_and_no_status_is_left():
    async def main() -> list[bool]:
        drain = interceptors.Drain()
        seen = [drain.idle.is_set()]
        drain.opened()
        seen.append(drain.idle.is_set())
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        drain.sending(pending)
        drain.done()
        seen.append(drain.idle.is_set())  # a status still on its way
        pending.set_result(None)
        await asyncio.sleep(0)
        seen.append(drain.idle.is_set())
        return seen

    assert run(main()) == [True, False, False, True]


# ---------------------------------------------------------------------------------------------
# Seams: a given HTTP session


@pytest.fixture
def tiny_zstack():
    """An aiohttp server on loopback answering the two requests these tests send."""
    seen: list[str] = []

    async def candidates(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=b'{"inventories": []}')

    async def login(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=b'{"inventory": {"uuid": "0123456789abcdef0123456789abcdef"}}')

    async def start() -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_get("/zstack/v1/vm-instances/{uuid}/iso-candidates", candidates)
        app.router.add_put("/zstack/v1/accounts/login", login)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}"

    return start, seen


def test_the_zstack_client_uses_a_given_session_and_leaves_it_open(tiny_zstack):
    start, seen = tiny_zstack

    async def main() -> tuple[int, bool, bool]:
        runner, url = await start()
        try:
            async with aiohttp.ClientSession(headers={"X-Test": "given"}) as session:
                client = ZStackClient(url, PassThrough(), max_body_bytes=1 << 20)
                await client.start(session=session)
                caller = client.credentials.authenticate_caller((("authorization", "OAuth " + "a" * 32),))
                reply = await client.get_iso_candidates(
                    CandidateIsoQuery("e2da653a0fba430f9d2e9a6240faed73", (), ()),
                    caller,
                    Deadline.start(5, 5),
                )
                reply.account.close()
                await client.close()
                return reply.size, session.closed, len(seen) == 1
        finally:
            await runner.cleanup()

    assert run(main()) == (len(b'{"inventories": []}'), False, True)


def test_the_account_login_uses_a_given_session(tiny_zstack):
    start, seen = tiny_zstack

    async def main() -> tuple[str, bool]:
        runner, url = await start()
        try:
            async with aiohttp.ClientSession() as session:
                login = AccountLogin(url, "admin", Secret("password"), http=session)
                headers = await login.headers(login.authenticate_caller(()), "GET", "/v1/x")
                await login.close()
                return headers["Authorization"], session.closed
        finally:
            await runner.cleanup()

    assert run(main()) == ("OAuth 0123456789abcdef0123456789abcdef", False)
    assert seen[0] == "/zstack/v1/accounts/login"


def test_classification_is_by_zstack_code_not_http_status():
    not_found = errors.from_zstack_error(
        errors.error_code_from_json({"code": "SYS.1003", "details": "no VM"}), 503, deadline_sent=False
    )
    assert (not_found.code, not_found.reason, not_found.retryable) == (
        grpc.StatusCode.NOT_FOUND,
        "ZSTACK_SYS_1003",
        False,
    )
    proxy = errors.from_http_response(
        502, b"<html><title>502 Bad Gateway</title></html>", deadline_sent=False
    )
    assert (proxy.code, proxy.reason, proxy.retryable) == (
        grpc.StatusCode.UNAVAILABLE,
        errors.Reason.UPSTREAM_UNAVAILABLE,
        True,
    )
