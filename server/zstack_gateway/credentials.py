"""How a call authenticates to ZStack: exactly one mode is active per gateway (``--auth-mode``).

* :class:`PassThrough` (the default): the caller's ``authorization: OAuth <session-uuid>`` metadata
  goes to ZStack unchanged; a call without it is refused before anything goes upstream.
* :class:`AccountLogin`: the gateway logs in with its own account name and password
  (``PUT /zstack/v1/accounts/login``, ``logInByAccount``, the password as lowercase hex SHA-512) and
  sends that session for every call. Concurrent first calls share one login; when ZStack says the
  session is invalid (``ID.1001`` or a newer session ``globalErrorCode``) it logs in again once and
  the call is tried once more; shutdown logs the session out.
* :class:`AccessKeySigner`: the gateway signs every request as ZStack's SDKs do
  (``Authorization: ZStack <keyId>:<base64 HMAC-SHA1(secret, METHOD\\nDate\\n/v1/<path>)>`` and ``Date``).

Every mode turns the caller's metadata into a :class:`CallerAuth` (checked before any upstream call),
gives the headers of each upstream request, may refresh its credentials once when ZStack says the
session is invalid, and says through :meth:`Credentials.problem` whether it can authenticate at all
(readiness turns health NOT_SERVING while it cannot).

In the modes that hold credentials the caller's own ``authorization`` metadata never goes to ZStack:
``Bearer <token>`` is the caller token (see :mod:`zstack_gateway.callers`), a ZStack credential
(``OAuth ...``, ``ZStack ...``) is refused with INVALID_ARGUMENT (the caller would otherwise believe it
acts as its own session while it acts as the gateway's account), anything else is ignored.

No secret (password, its hash, the session uuid, the AccessKey secret, a signature) is ever logged or
put into an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import aiohttp
import grpc
import orjson

from zstack_gateway import errors, security, validation
from zstack_gateway.errors import SESSION_GLOBAL_CODES, GatewayError
from zstack_gateway.secret import Secret

if TYPE_CHECKING:
    from zstack_gateway.config import Config

log = logging.getLogger("zstack_gateway.credentials")

Metadata = Iterable[tuple[str, str | bytes]] | None

USER_AGENT = "zstack-grpc-gateway/0.1"


@dataclass(frozen=True)
class CallerAuth:
    """What a call acts as. ``identity`` separates callers for request coalescing: calls share an
    upstream request only when their identities are equal. It is a digest, never a secret."""

    identity: str
    authorization: str | None = None

    def __repr__(self) -> str:  # never show a session in logs or tracebacks
        return f"CallerAuth(identity={self.identity[:12]}...)"


class Credentials(Protocol):
    """One authentication mode."""

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        """Check the caller's metadata; raise a GatewayError (UNAUTHENTICATED, or INVALID_ARGUMENT for
        metadata this mode does not take) when it cannot call."""
        ...

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        """Headers for one upstream request. ``api_path`` is ZStack's path without the ``/zstack``
        context and without the query, e.g. ``/v1/vm-instances/<uuid>/iso-candidates``."""
        ...

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        """ZStack said the session is invalid: return True when new credentials are in place and the
        call should be tried once more."""
        ...

    async def problem(self) -> str | None:
        """Why this mode cannot authenticate right now (e.g. ZStack rejected the account), or None.
        May talk to ZStack (account mode logs in when it holds no session); never raises."""
        ...

    async def close(self) -> None:
        """Release what the mode holds (e.g. log a session out)."""
        ...


def digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


def is_invalid_session(error: GatewayError) -> bool:
    """ZStack's "session invalid or expired", in its classic and its newer global-code forms."""
    return error.zstack_code == "ID.1001" or error.error_code.global_error_code in SESSION_GLOBAL_CODES


class PassThrough:
    """The caller's own ZStack session, passed through unchanged."""

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        authorization = validation.session_authorization(metadata)
        return CallerAuth(identity=digest("session", authorization), authorization=authorization)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        assert caller.authorization is not None
        return {"Authorization": caller.authorization}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        return False  # the caller owns the session; only the caller can get a new one

    async def problem(self) -> str | None:
        return None  # each caller brings its own session

    async def close(self) -> None:
        return None


def refuse_zstack_credentials(metadata: Metadata, acts_as: str, mode: str) -> None:
    """In the modes that hold credentials: refuse a caller that sends its own ZStack credentials."""
    for key, value in metadata or ():
        if key != "authorization" or not isinstance(value, str):
            continue
        scheme = value.strip().partition(" ")[0].lower()
        if scheme in ("oauth", "zstack"):
            shown = "OAuth" if scheme == "oauth" else "ZStack"
            raise errors.caller_zstack_credentials_refused(shown, acts_as, mode)


# ---------------------------------------------------------------------------------------------
# Account mode

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
    ) -> None:
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
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        #: Logins sent to ZStack (successful or not), for tests and metrics.
        self.logins = 0

    @property
    def account(self) -> str:
        return self._account

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        refuse_zstack_credentials(metadata, f"its own account {self._account!r}", security.ACCOUNT)
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

    async def problem(self) -> str | None:
        try:
            async with asyncio.timeout(self._login_timeout):
                await self._current_session()
        except GatewayError as exc:
            return exc.message
        except TimeoutError:
            return f"logging in to ZStack as account {self._account!r} took over {self._login_timeout:g} s"
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
            if self._http is not None:
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
            task.add_done_callback(_retrieve)
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
                headers={"User-Agent": USER_AGENT},
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
        except TimeoutError:
            raise errors.unavailable(f"{what}no answer within {budget:g} s", retryable=False) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise errors.unavailable(f"{what}cannot connect: {reason}", retryable=False) from None
        except aiohttp.ClientError as exc:
            raise errors.unavailable(f"{what}HTTP failure ({type(exc).__name__})", retryable=False) from None


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


def _retrieve(task: asyncio.Task[str]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so a login nobody waits for any more is not reported


# ---------------------------------------------------------------------------------------------
# AccessKey mode

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_zone(name: str) -> tzinfo:
    """``GMT``/``UTC`` or an IANA zone name."""
    return UTC if name.upper() in ("GMT", "UTC") else ZoneInfo(name)


def http_date(moment: datetime) -> str:
    """``EEE, dd MMM yyyy HH:mm:ss z`` in English, whatever the locale: the zone as ``GMT`` for a zero
    offset, else ``GMT+hh:mm`` (a form Java's parsers read without ambiguity, unlike ``CST``)."""
    offset = moment.utcoffset() or timedelta(0)
    if offset:
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(int(offset.total_seconds())) // 60
        zone = f"GMT{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    else:
        zone = "GMT"
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} {moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {zone}"
    )


def access_key_signature(secret: Secret, method: str, date: str, api_path: str) -> str:
    """What ZStack's SDKs send: base64(HMAC-SHA1(secret, METHOD\\nDate\\n/v1/<decoded path>))."""
    to_sign = f"{method}\n{date}\n{unquote(api_path)}".encode()
    mac = hmac.new(secret.reveal().encode("utf-8"), to_sign, hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


class AccessKeySigner:
    """Signs each upstream request with a ZStack AccessKey.

    ``zone`` is the zone the ``Date`` header is written in. ZStack compares ``Date`` with its own
    clock (±15 minutes). With its default ``rest.checkTimeZone=false`` it compares *wall clocks* and
    ignores the zone written, so the Date must be the management node's local time: the default here
    is the MN's zone (``--zstack-tz``). With ``rest.checkTimeZone=true`` any zone works, GMT included.
    """

    def __init__(self, key_id: str, secret: Secret, *, zone: tzinfo = UTC) -> None:
        self._key_id = key_id
        self._secret = secret
        self._zone = zone
        self._identity = digest("access-key", key_id)

    @property
    def key_id(self) -> str:
        return self._key_id

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        refuse_zstack_credentials(metadata, f"AccessKey {self._key_id!r}", security.ACCESS_KEY)
        return CallerAuth(identity=self._identity)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        date = http_date(datetime.now(self._zone))
        signature = access_key_signature(self._secret, method, date, api_path)
        return {"Authorization": f"ZStack {self._key_id}:{signature}", "Date": date}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        return False  # every request is signed afresh; there is no session to renew

    async def problem(self) -> str | None:
        return None  # a wrong key shows on the first call (UNAUTHENTICATED, ZStack ID.1000)

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------


def from_config(config: Config, ssl_context: ssl.SSLContext | bool = True) -> Credentials:
    """The mode ``config`` asks for (Config.check() has made sure its settings are complete)."""
    if config.auth_mode == security.ACCOUNT:
        log.info("auth mode account: calling ZStack as account %r", config.zstack_account)
        return AccountLogin(
            config.zstack_url,
            config.zstack_account,
            security.password(config),
            ssl_context=ssl_context,
            login_timeout=min(10.0, config.default_timeout),
        )
    if config.auth_mode == security.ACCESS_KEY:
        zone_name = security.date_zone_name(config)
        log.info(
            "auth mode access-key: signing requests with AccessKey %r, Date in %s",
            config.zstack_access_key_id,
            zone_name,
        )
        return AccessKeySigner(
            config.zstack_access_key_id, security.access_key_secret(config), zone=date_zone(zone_name)
        )
    return PassThrough()
