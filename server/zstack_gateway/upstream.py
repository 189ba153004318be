"""The ZStack client: one pooled aiohttp session, one method per ZStack API the gateway calls.

Its one job is HTTP: build the request for the configured management node only, send it within the
call's deadline, read the body up to the size cap (charged to the memory budget as it arrives), and
hand back the body as it came, or raise the GatewayError that :mod:`zstack_gateway.errors` classifies
for the failure. The body is parsed later, image by image (see :mod:`zstack_gateway.stream`).

Why aiohttp and not requests: the gateway serves every call on one asyncio event loop (grpc.aio),
so its HTTP client must be asynchronous and cancellable mid-request: a caller who cancels or whose
deadline passes abandons the upstream request at once. requests blocks a thread per call and cannot
be cancelled mid-body; on loopback aiohttp also costs about a third of requests per call.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from typing import NamedTuple, Protocol
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from zstack_gateway import errors, transport
from zstack_gateway.auth import CallerAuth, Credentials, is_invalid_session
from zstack_gateway.budget import Account, MemoryBudget
from zstack_gateway.deadline import Deadline
from zstack_gateway.retry import DEFAULT_RETRY, RetryPolicy
from zstack_gateway.telemetry import calls
from zstack_gateway.validation import AttachIsoQuery, CandidateIsoQuery, CandidateVmQuery, DetachIsoQuery

#: Error bodies larger than this are read in a worker thread (see _request).
OFF_LOOP_ERROR_BYTES = 1024 * 1024


class Reply(NamedTuple):
    """An answer's body as it came, not parsed, and the account that holds its bytes against the
    gateway's memory budget until the calls that use it are done with them; its HTTP status."""

    body: bytearray
    account: Account
    status: int = 200

    @property
    def size(self) -> int:
        return len(self.body)


class BodySink(Protocol):
    """Takes a 200 answer's body as it arrives (stream.Arrival). ``begin`` comes once the headers
    are in, with the buffer the body is read into, the account that holds it and the timer that
    bounds the read (the sink may push it later: coalesced callers with later deadlines hold the
    read); ``feed`` after each piece appended. A body announced under ``min_bytes`` is read whole
    first (no sink)."""

    min_bytes: int

    @property
    def started(self) -> bool: ...

    def begin(self, body: bytearray, account: Account, limit: asyncio.Timeout | None = None) -> None: ...

    def feed(self) -> bool: ...


class _Share:
    """The upstream slots of one identity, and how many calls hold or wait for one of them."""

    __slots__ = ("slots", "users")

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.users = 0


class ZStackClient:
    """Talks to one ZStack management node. Create it inside the running event loop, ``await
    start()`` once, ``await close()`` at shutdown.

    ``max_concurrent`` caps the HTTP requests in flight to ZStack (its API mediator runs 5 workers by
    default and queues the rest); a call waits up to ``queue_timeout`` seconds (and never past its
    deadline) for a slot, then fails with RESOURCE_EXHAUSTED.

    ``max_per_identity`` (0 or ``max_concurrent`` and above: no share) caps the slots that calls of
    one identity (:attr:`CallerAuth.identity`) hold at once, so that callers of one identity whose
    requests hang cannot take every slot from the others. A call first takes a slot of its
    identity's share, then a global one, both within the same wait: calls queued behind their own
    identity's share never sit on global slots.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        max_body_bytes: int,
        pool_size: int = 100,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_concurrent: int = 16,
        max_per_identity: int = 0,
        queue_timeout: float = 10.0,
        budget: MemoryBudget | None = None,
    ) -> None:
        # Only the path prefix of the configured URL is used; nothing a caller sends can change the
        # scheme, host or port, and every path segment taken from a request is percent-encoded.
        self._base = base_url.rstrip("/")
        self._credentials = credentials
        self._max_body_bytes = max_body_bytes
        self._budget = budget if budget is not None else MemoryBudget(2**63)
        self._pool_size = pool_size
        self._retry = retry
        self._max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_per_identity = max_per_identity if 0 < max_per_identity < max_concurrent else 0
        # The shares of the identities that hold or wait for a slot now; an identity's entry goes
        # when its last call leaves, so the map never outgrows the calls in progress.
        self._shares: dict[str, _Share] = {}
        self._queue_timeout = queue_timeout
        #: HTTP requests to ZStack in flight (the ``upstream_in_flight`` gauge reads it when scraped).
        self.requests_in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = True

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    @property
    def max_per_identity(self) -> int:
        """The slots one identity may hold at once; 0 when there is no share."""
        return self._max_per_identity

    @property
    def identities_queued_or_in_flight(self) -> int:
        """Identities with a call that holds or waits for a slot of their share (0 without shares)."""
        return len(self._shares)

    async def start(
        self, ssl_context: ssl.SSLContext | bool = True, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        """``ssl_context``: how an https:// ZStack is verified (see tls.zstack_ssl_context); True is
        aiohttp's default, the system's CA store. ``session``: an HTTP session to use instead of the
        client's own (a test's, or one an embedding program shares); the client then leaves it open
        at :meth:`close`."""
        if session is not None:
            self._session, self._owns_session = session, False
            return
        self._owns_session = True
        connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, ssl=ssl_context)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Proxy variables of the gateway's environment must not redirect ZStack traffic, and
            # reading them costs time on every call.
            trust_env=False,
            headers={"User-Agent": transport.USER_AGENT},
            # Cookies from ZStack (none expected) must never travel from one caller to another.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self._credentials.close()
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def iso_candidates_path(self, query: CandidateIsoQuery) -> str:
        """ZStack's API path for the query, without the /zstack context and without the query string."""
        return f"/v1/vm-instances/{quote(query.vm_instance_uuid, safe='')}/iso-candidates"

    def attach_iso_path(self, query: AttachIsoQuery) -> str:
        """AttachIsoToVmInstance: ``POST /v1/vm-instances/{vmInstanceUuid}/iso/{isoUuid}``."""
        vm, iso = quote(query.vm_instance_uuid, safe=""), quote(query.iso_uuid, safe="")
        return f"/v1/vm-instances/{vm}/iso/{iso}"

    def detach_iso_path(self, query: DetachIsoQuery) -> str:
        """DetachIsoFromVmInstance: ``DELETE /v1/vm-instances/{vmInstanceUuid}/iso`` (isoUuid in the
        query string)."""
        return f"/v1/vm-instances/{quote(query.vm_instance_uuid, safe='')}/iso"

    def url_for(self, api_path: str, query: list[tuple[str, str]]) -> URL:
        text = self._base + "/zstack" + api_path + ("?" + urlencode(query, quote_via=quote) if query else "")
        # encoded=True: send exactly these bytes; yarl must not re-normalise the path.
        return URL(text, encoded=True)

    async def check_ready(self, budget: float) -> str | None:
        """``GET /zstack/v1/management-nodes/ready`` (no credentials): None when ZStack is ready, else
        why not. Never retried, never queued behind callers' requests."""
        deadline = Deadline.start(None, budget)
        try:
            await self._request(
                "/v1/management-nodes/ready", self.url_for("/v1/management-nodes/ready", []), {}, deadline
            )
        except errors.GatewayError as exc:
            return exc.message
        return None

    async def credentials_problem(self) -> errors.GatewayError | None:
        """Why the credentials mode cannot authenticate right now (e.g. a rejected account), or None."""
        problem = getattr(self._credentials, "problem", None)
        return await problem() if problem is not None else None

    async def get_iso_candidates(
        self, query: CandidateIsoQuery, caller: CallerAuth, deadline: Deadline, sink: BodySink | None = None
    ) -> Reply:
        """``GET /zstack/v1/vm-instances/{uuid}/iso-candidates``: the body of a 200 answer (also
        handed to ``sink`` as it arrives, when given)."""
        return await self.get(self.iso_candidates_path(query), query.query_pairs(), caller, deadline, sink)

    async def get_candidate_vms(
        self, query: CandidateVmQuery, caller: CallerAuth, deadline: Deadline
    ) -> Reply:
        """``GET /zstack/v1/images/iso/{isoUuid}/vm-candidates``: the body of a 200 answer."""
        api_path = f"/v1/images/iso/{quote(query.iso_uuid, safe='')}/vm-candidates"
        return await self.get(api_path, query.query_pairs(), caller, deadline)

    async def submit(
        self,
        method: str,
        api_path: str,
        query: list[tuple[str, str]],
        body: bytes | None,
        job_uuid: str,
        caller: CallerAuth,
        deadline: Deadline,
    ) -> Reply:
        """One request of an async API, carrying ``X-Job-UUID: job_uuid``: the body of its 202.

        A transport failure (refused, reset, closed before the answer, a proxy's 502/503/504) is
        retried with the *same* job uuid: ZStack runs a job uuid at most once and refuses a repeat
        with 400 ``Duplicate job uuid`` (errors.Reason.ZSTACK_DUPLICATE_JOB), which the caller of
        this method takes for "already accepted". No X-API-Timeout is sent: the job's own timeout
        (ZStack's, 30 min by default) is not the caller's wait, which may end before the job does.
        """
        url = self.url_for(api_path, query)

        async def attempt() -> Reply:
            headers = await self._credentials.headers(caller, method, api_path)
            headers["X-Job-UUID"] = job_uuid
            if body is not None:
                headers["Content-Type"] = "application/json;charset=UTF-8"
            try:
                return await self._limited(
                    api_path, url, headers, deadline, caller.identity, method=method, data=body, ok=(202,)
                )
            except errors.GatewayError as exc:
                if exc.reason == errors.Reason.UPSTREAM_UNAVAILABLE:
                    exc.retryable = True  # the same job uuid: ZStack never runs it twice
                raise

        return await self._retry.run(attempt, deadline)

    async def poll_job(
        self, job_uuid: str, caller: CallerAuth, deadline: Deadline, api_path: str = ""
    ) -> Reply:
        """``GET /zstack/v1/api-jobs/{uuid}`` on the configured ZStack (never the host a 202's
        ``location`` names): a 200 (the job's result) or a 202 (still running) reply. A 503 (the job
        failed) or a 404 (the job is unknown or purged) is raised as its GatewayError. ``api_path``:
        the job's API, whose metric label (``<label> job``) the polls are counted under."""
        label = f"{api_label(api_path)} job" if api_path else None
        poll_path = f"/v1/api-jobs/{quote(job_uuid, safe='')}"
        url = self.url_for(poll_path, [])

        async def attempt() -> Reply:
            headers = await self._credentials.headers(caller, "GET", poll_path)
            return await self._limited(
                poll_path, url, headers, deadline, caller.identity, ok=(200, 202), label=label
            )

        return await self._retry.run(attempt, deadline)

    async def get(
        self,
        api_path: str,
        query: list[tuple[str, str]],
        caller: CallerAuth,
        deadline: Deadline,
        sink: BodySink | None = None,
    ) -> Reply:
        """One logical GET: safe retries, and one fresh try after the credentials are refreshed when
        ZStack says the session is invalid (in the modes that hold their own credentials)."""
        url = self.url_for(api_path, query)

        async def attempt() -> Reply:
            headers = await self._credentials.headers(caller, "GET", api_path)
            return await self._limited(
                api_path, url, headers, deadline, caller.identity, api_timeout=True, sink=sink
            )

        try:
            return await self._retry.run(attempt, deadline)
        except errors.GatewayError as exc:
            if not is_invalid_session(exc) or not await self._credentials.refresh_after_invalid_session(
                caller, exc
            ):
                raise
        return await self._retry.run(attempt, deadline)

    async def _limited(
        self,
        api_path: str,
        url: URL,
        headers: dict[str, str],
        deadline: Deadline,
        identity: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        api_timeout: bool = False,
        label: str | None = None,
        sink: BodySink | None = None,
    ) -> Reply:
        """The request once the call holds a slot of its identity's share (when shares are on) and
        a global slot. Whatever ends the call (an answer, an error, a timeout, a cancellation at any
        await) releases exactly the slots it took."""
        share: _Share | None = None
        if self._max_per_identity:
            share = self._shares.get(identity)
            if share is None:
                share = self._shares[identity] = _Share(self._max_per_identity)
            share.users += 1
        holds_share = holds_global = False
        try:
            wait = min(self._queue_timeout, deadline.remaining())
            try:
                if not self._slots.locked() and (share is None or not share.slots.locked()) and wait > 0:
                    # Free slots are taken without a wait, so without a timer (the usual case).
                    if share is not None:
                        await share.slots.acquire()
                        holds_share = True
                    await self._slots.acquire()
                    holds_global = True
                else:
                    async with asyncio.timeout(wait):
                        if share is not None:
                            await share.slots.acquire()
                            holds_share = True
                        await self._slots.acquire()
                        holds_global = True
            except TimeoutError:
                if wait < self._queue_timeout:
                    raise errors.deadline_exceeded(wait, caller_deadline=deadline.from_caller) from None
                if share is not None and not holds_share:
                    raise errors.identity_overloaded(
                        self._max_per_identity, self._max_concurrent, wait
                    ) from None
                raise errors.overloaded(self._max_concurrent, wait) from None
            return await self._request(
                api_path,
                url,
                headers,
                deadline,
                method=method,
                data=data,
                ok=ok,
                api_timeout=api_timeout,
                label=label,
                sink=sink,
            )
        finally:
            # No await in here: nothing can interrupt the bookkeeping.
            if holds_global:
                self._slots.release()
            if share is not None:
                if holds_share:
                    share.slots.release()
                share.users -= 1
                if share.users == 0 and self._shares.get(identity) is share:
                    del self._shares[identity]

    async def _request(
        self,
        api_path: str,
        url: URL,
        headers: dict[str, str],
        deadline: Deadline,
        *,
        method: str = "GET",
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        api_timeout: bool = True,
        label: str | None = None,
        sink: BodySink | None = None,
    ) -> Reply:
        """One HTTP request; its outcome is recorded on the call (telemetry.calls) whatever it is.
        A status outside ``ok`` is raised as the GatewayError errors.py classifies."""
        started = time.monotonic()
        status: int | None = None
        zstack_code: str | None = None
        self.requests_in_flight += 1
        try:
            status, reply = await self._send(url, headers, deadline, method, data, api_timeout, sink)
            if status not in ok:
                reply.account.close()
                body = bytes(reply.body)
                if len(body) > OFF_LOOP_ERROR_BYTES:
                    # Reading a large error body costs milliseconds per MB: off the event loop, so
                    # that other calls are not held up meanwhile.
                    error = await asyncio.to_thread(
                        errors.from_http_response,
                        status,
                        body,
                        deadline_sent=deadline.from_caller and api_timeout,
                    )
                else:
                    error = errors.from_http_response(
                        status, body, deadline_sent=deadline.from_caller and api_timeout
                    )
                zstack_code = error.zstack_code if not error.zstack_code.startswith("GATEWAY.") else None
                raise error
        finally:
            self.requests_in_flight -= 1
            calls.record_upstream(
                label or api_label(api_path), status, zstack_code, time.monotonic() - started
            )
        return reply

    async def _send(
        self,
        url: URL,
        headers: dict[str, str],
        deadline: Deadline,
        method: str = "GET",
        data: bytes | None = None,
        api_timeout: bool = True,
        sink: BodySink | None = None,
    ) -> tuple[int, Reply]:
        if self._session is None:
            raise RuntimeError("ZStackClient.start() was not awaited")
        headers = {**headers, **calls.upstream_headers(), "Accept": "application/json"}
        if deadline.from_caller and api_timeout:
            # Tell ZStack the caller's deadline, so it gives up on its side too. A ZStack timeout
            # (SYS.1001) then means the caller's deadline ran out.
            headers["X-API-Timeout"] = str(max(1, math.ceil(deadline.remaining())))
        budget = deadline.remaining()
        limit: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(budget) as limit:
                with transport.mapped_errors(url):
                    async with self._session.request(
                        method, url, headers=headers, data=data, allow_redirects=False
                    ) as resp:
                        reply = await self._read_body(resp, sink if resp.status == 200 else None, limit)
                        return resp.status, reply._replace(status=resp.status)
        except TimeoutError as exc:
            if sink is not None and sink.started and limit is not None:
                # The read of an arriving answer may have been held longer (see BodySink).
                when = limit.when()
                if when is not None:
                    started = deadline.expires_at - budget  # time.monotonic(), as the loop's clock
                    budget = max(
                        budget, when - asyncio.get_running_loop().time() + time.monotonic() - started
                    )
            raise errors.deadline_exceeded(budget, caller_deadline=deadline.from_caller) from exc
        except errors.GatewayError as exc:
            if sink is not None and sink.started:
                exc.retryable = False  # part of the answer may have reached callers already
            raise

    async def _read_body(
        self, resp: aiohttp.ClientResponse, sink: BodySink | None = None, limit: asyncio.Timeout | None = None
    ) -> Reply:
        """The whole body, at most the cap, charged to the memory budget piece by piece as it arrives;
        ``sink`` (for a body not announced under its ``min_bytes``) gets each piece as it comes.

        Memory follows the bytes received: a Content-Length over the cap fails at once, but none is
        ever allocated ahead (a peer may announce 250 MB and send 18 bytes). The buffer grows by
        appends, which never holds the body twice. Whatever ends the read early (the cap, the budget,
        a broken connection, the deadline) releases what was charged.
        """
        cap = self._max_body_bytes
        length = resp.content_length
        if length is not None and length > cap:
            raise errors.bad_response(
                f"the body is {length} bytes, over the gateway's cap of {cap} bytes (--max-body-bytes)",
                http_status=resp.status,
            )
        account = self._budget.account()
        body = bytearray()
        if sink is not None and (length is None or length >= sink.min_bytes):
            sink.begin(body, account, limit)
        else:
            sink = None
        try:
            async for chunk in resp.content.iter_any():
                if len(body) + len(chunk) > cap:
                    raise errors.bad_response(
                        f"the body is over the gateway's cap of {cap} bytes (--max-body-bytes)",
                        http_status=resp.status,
                    )
                account.charge(len(chunk))
                body += chunk
                if sink is not None:
                    more = sink.feed()
                    while more:  # a slice checked: a turn of the loop lets the calls send its images
                        await asyncio.sleep(0)
                        more = sink.feed()
        except BaseException:
            account.close()
            raise
        return Reply(body, account)


def api_label(api_path: str) -> str:
    """A bounded metric label for a ZStack API path: UUIDs replaced by ``{uuid}``."""
    return _UUID_SEGMENT.sub("/{uuid}", api_path)


_UUID_SEGMENT = re.compile(r"/[0-9a-fA-F]{32}(?=/|$)")
