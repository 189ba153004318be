"""Account mode: the gateway logs in with its own account name and password and sends that
session for every call.

``PUT /zstack/v1/accounts/login`` (``logInByAccount``, the password as lowercase hex SHA-512).
Concurrent first calls share one login; when ZStack says the session is invalid (``ID.1001`` or a
newer session ``globalErrorCode``) it logs in again once and the call is tried once more; shutdown
logs the session out. No secret (password, its hash, the session uuid) is ever logged or put into an
error.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import re
import ssl
import time

import aiohttp
import grpc
import orjson
from yarl import URL

from zstack_gateway import errors, transport
from zstack_gateway.auth.base import CallerAuth, Metadata, digest, refuse_zstack_credentials
from zstack_gateway.errors import GatewayError
from zstack_gateway.settings import Secret
from zstack_gateway.settings.policy import ACCOUNT
from zstack_gateway.tasks import retrieve

log = logging.getLogger("zstack_gateway.credentials")

# The session the current task's upstream request used (set by headers(), read by the refresh in the
# same task), so that a burst of calls failing on one expired session causes one login, not many.
_session_used: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zstack_gateway_session_used", default=None
)
_SESSION_UUID = re.compile(r"[A-Za-z0-9-]{1,128}")
_MAX_ANSWER_BYTES = 1024 * 1024


#: Seconds the first failed login for ZStack or transport trouble is remembered, and at most.
TROUBLE_BACKOFF = 1.0
MAX_TROUBLE_BACKOFF = 15.0


class AccountLogin:
    """The gateway's own ZStack session, from its account name and password.

    * One login at a time: concurrent calls that find no session wait for the same login (a task of
      its own, so a caller that gives up does not abort it for the others).
    * ``refresh_after_invalid_session`` logs in again only when the failed request used the session
      still current; calls that failed on an older one just retry with the new one.
    * A failed login is remembered for ``rejection_backoff`` seconds, doubled after each further
      failure up to ``max_rejection_backoff`` (for ZStack or transport trouble, UNAVAILABLE: from
      TROUBLE_BACKOFF up to MAX_TROUBLE_BACKOFF): calls in that window fail at once with the same error
      instead of hammering ZStack's login (and its lockout rules) in a loop. Whatever the login's
      answer (a rejected account, ZStack's own error, a proxy's page, unreadable or hostile JSON, a
      refused or broken connection, no answer in time), the calls get a GatewayError, classified by
      :func:`errors.login_failed`: UNAUTHENTICATED, UNAVAILABLE or INTERNAL (ZSTACK_BAD_RESPONSE).
    """

    def __init__(
        self,
        base_url: str,
        account: str,
        password: Secret,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        login_timeout: float = 10.0,
        rejection_backoff: float = 5.0,
        max_rejection_backoff: float = 60.0,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        """``http``: an HTTP session to log in with instead of one of its own (left open at close)."""
        self._base = base_url.rstrip("/")
        self._account = account
        self._password_hash = Secret(hashlib.sha512(password.reveal().encode("utf-8")).hexdigest())
        self._ssl = ssl_context
        self._login_timeout = login_timeout
        self._rejection_backoff = rejection_backoff
        self._max_rejection_backoff = max_rejection_backoff
        self._failures = 0
        self._identity = digest("account", self._base, account)
        self._session: str | None = None
        self._login_task: asyncio.Task[str] | None = None
        self._failure: GatewayError | None = None
        self._failed_until = 0.0
        self._http: aiohttp.ClientSession | None = http
        self._owns_http = http is None
        self._closed = False
        #: Logins sent to ZStack (successful or not), for tests and metrics.
        self.logins = 0

    @property
    def account(self) -> str:
        return self._account

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        refuse_zstack_credentials(metadata, f"its own account {self._account!r}", ACCOUNT)
        return CallerAuth(identity=self._identity)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        session = await self._current_session()
        _session_used.set(session)
        return {"Authorization": f"OAuth {session}"}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        used = _session_used.get()
        if self._session is not None and (used is None or used == self._session):
            log.info(
                "ZStack says the session of account %r is invalid or expired: logging in again",
                self._account,
            )
            self._session = None
        await self._current_session()  # a login error goes to the caller instead of ZStack's ID.1001
        return True

    async def problem(self) -> GatewayError | None:
        try:
            async with asyncio.timeout(self._login_timeout):
                await self._current_session()
        except GatewayError as exc:
            return exc
        except TimeoutError:
            return errors.unavailable(
                f"logging in to ZStack as account {self._account!r} took over {self._login_timeout:g} s",
                retryable=False,
            )
        return None

    async def close(self) -> None:
        self._closed = True
        task, self._login_task = self._login_task, None
        if task is not None and not task.done():
            task.cancel()
        session, self._session = self._session, None
        try:
            if session is not None:
                await self._logout(session)
        finally:
            if self._http is not None and self._owns_http:
                await self._http.close()
            self._http = None

    # --- the session ------------------------------------------------------------------------------

    async def _current_session(self) -> str:
        if self._session is not None:
            return self._session
        if self._closed:
            raise errors.unavailable("the gateway is shutting down", retryable=False)
        if self._failure is not None:
            left = self._failed_until - time.monotonic()
            if left > 0:
                raise _copy(self._failure, left)
        task = self._login_task
        if task is None:
            task = asyncio.ensure_future(self._login_and_keep())
            task.add_done_callback(retrieve)
            self._login_task = task
        return await asyncio.shield(task)

    async def _login_and_keep(self) -> str:
        try:
            try:
                session = await self._login()
            except GatewayError as exc:
                failure = errors.login_failed(exc, self._account)
            except Exception:  # a fault of the gateway's own: logged once per back-off, never raised raw
                log.exception("logging in to ZStack as account %r failed unexpectedly", self._account)
                failure = errors.internal(f"logging in to ZStack as account {self._account!r} failed")
            else:
                self._failure = None
                self._failures = 0
                self._session = session
                return session
            self._failures += 1
            first, cap = self._rejection_backoff, self._max_rejection_backoff
            if failure.code == grpc.StatusCode.UNAVAILABLE:
                # ZStack or the path to it is in trouble (restarting, a proxy's 502, refused): that
                # passes by itself, so the gateway tries again sooner than after a rejected account.
                first, cap = min(first, TROUBLE_BACKOFF), min(cap, MAX_TROUBLE_BACKOFF)
            backoff = min(first * 2 ** min(self._failures - 1, 16), cap)
            self._failure = failure
            self._failed_until = time.monotonic() + backoff
            log.warning("%s; the gateway tries again in %g s", failure.message, backoff)
            raise _copy(failure, backoff) from None
        finally:
            self._login_task = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4, ssl=self._ssl),
                trust_env=False,
                headers={"User-Agent": transport.USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    async def _login(self) -> str:
        """One login; raises the GatewayError classified from its answer (see errors)."""
        self.logins += 1
        body = json.dumps(
            {"logInByAccount": {"accountName": self._account, "password": self._password_hash.reveal()}}
        )
        status, raw = await self._request(
            "PUT",
            "/v1/accounts/login",
            "",  # errors.login_failed says what failed
            data=body.encode(),
            headers={"Content-Type": "application/json;charset=UTF-8"},
        )
        if status != 200:
            raise errors.from_http_response(status, raw, deadline_sent=False)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise errors.bad_response(f"the login answer is not JSON ({exc.msg})") from None
        inventory = answer.get("inventory") if isinstance(answer, dict) else None
        uuid = inventory.get("uuid") if isinstance(inventory, dict) else None
        if not isinstance(uuid, str) or not _SESSION_UUID.fullmatch(uuid):
            raise errors.bad_response("the login answer carries no session uuid (inventory.uuid)")
        log.info("logged in to ZStack as account %r", self._account)
        return uuid

    async def _logout(self, session: str) -> None:
        try:
            status, _ = await self._request(
                "DELETE", f"/v1/accounts/sessions/{session}", "logging out of ZStack", budget=3.0
            )
        except GatewayError as exc:
            log.warning("could not log the gateway's session out of ZStack: %s", exc.message)
            return
        if status == 200:
            log.info("logged the session of account %r out of ZStack", self._account)
        else:
            log.warning("logging the gateway's session out of ZStack answered HTTP %d", status)

    async def _request(
        self,
        method: str,
        api_path: str,
        what: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        budget: float | None = None,
    ) -> tuple[int, bytes]:
        """One request to ZStack: its status and body, or a GatewayError whose message starts with
        ``what`` (when given)."""
        budget = self._login_timeout if budget is None else budget
        url = self._base + "/zstack" + api_path
        what = f"{what}: " if what else ""
        try:
            async with asyncio.timeout(budget):
                with transport.mapped_errors(URL(url), what.rstrip(": ")):
                    async with self._client().request(
                        method,
                        url,
                        data=data,
                        headers={**(headers or {}), "Accept": "application/json"},
                        allow_redirects=False,
                    ) as resp:
                        body = bytearray()
                        async for chunk in resp.content.iter_any():
                            body += chunk
                            if len(body) > _MAX_ANSWER_BYTES:
                                raise errors.bad_response(f"{what}the answer is over 1 MiB", http_status=None)
                        return resp.status, bytes(body)
        except TimeoutError as exc:
            raise errors.unavailable(f"{what}no answer within {budget:g} s", retryable=False) from exc


def _copy(err: GatewayError, retry_after: float) -> GatewayError:
    """A fresh copy of a remembered login failure for one call (an exception object raised in many
    calls would pile up their tracebacks); UNAVAILABLE says when the gateway tries again."""
    unavailable = err.code == grpc.StatusCode.UNAVAILABLE
    return GatewayError(
        err.code,
        err.message,
        err.reason,
        err.error_code,
        err.http_status,
        retry_after=round(retry_after, 3) if unavailable else None,
    )
