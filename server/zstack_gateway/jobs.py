"""ZStack's async APIs made safe to retry and to resume: submit a job once, then poll it.

A mutation (attach, detach) is one ZStack *job*, named by the ``X-Job-UUID`` the gateway sends:

* **Its uuid** comes from :func:`job_uuid`: a keyed hash of the caller's credential identity, the
  RPC, the request's content and its ``request_id`` (AIP-155). The same request with the same
  ``request_id`` and credentials names the same job, whether the first call is still running, has
  finished (ZStack keeps finished jobs about 3 hours) or lost its connection; another identity can
  never name it. An empty ``request_id`` makes a random uuid: every call is a new job.
* **Submitting** (:meth:`ZStackClient.submit`) retries a transport failure with the same uuid.
  ZStack runs a job uuid at most once: a repeat gets 400 ``Duplicate job uuid`` (reason
  ``ZSTACK_DUPLICATE_JOB``), which means "already accepted", and the gateway polls that job. A
  mutation is never sent again with a new uuid (a second attach would fail with SYS.1006 although
  the first succeeded), with one exception: a job that failed with ZStack's "invalid session"
  (ID.1001) ran nothing, so in the modes that hold their own credentials the gateway logs in again
  and submits once more under a second derived uuid.
* **Polling** (:meth:`ZStackClient.poll_job`) goes to the gateway's own configured ZStack URL, never
  to the host in the 202's ``location`` (an internal address of the management node); only the
  job's uuid is taken from it, checked to be 32 hex characters. Polls back off from
  :data:`FIRST_POLL` to :data:`MAX_POLL` seconds and always stop within the caller's deadline.
* **Time runs out** (the caller's deadline, or the gateway's default timeout): the job cannot be
  cancelled and goes on inside ZStack. The call ends with DEADLINE_EXCEEDED, reason
  ``ZSTACK_JOB_STILL_RUNNING``, whose ErrorInfo metadata carries ``jobUuid``, a little before the
  caller's own deadline so that the status reaches the caller. The job's uuid also goes to the
  caller in the initial metadata (``x-zstack-job-uuid``) as soon as ZStack accepted the job.

Limits (documented in docs/iso-workflow.md): ZStack's duplicate check is not atomic, so two
gateway replicas that submit the same uuid at the same moment may both run it; and a retry after a
reset may race the first attempt if ZStack was still reading it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import orjson

from zstack_gateway import errors
from zstack_gateway.auth import CallerAuth, is_invalid_session
from zstack_gateway.deadline import CALLER_DEADLINE_SLACK, Deadline
from zstack_gateway.telemetry import calls
from zstack_gateway.upstream import Reply, ZStackClient

log = logging.getLogger("zstack_gateway.jobs")

#: The first poll comes this soon after the 202 (ZStack's quick jobs are done in tens of ms).
FIRST_POLL = 0.05
#: Polls back off to at most this interval.
MAX_POLL = 1.0
#: How much of a caller's deadline is kept to send DEADLINE_EXCEEDED with the job's uuid before the
#: caller's own grpc gives up: at most this much, and at most a fifth of the call's time.
STATUS_MARGIN = 0.25
#: Metadata key of the job's uuid in the call's initial metadata.
JOB_METADATA_KEY = "x-zstack-job-uuid"

_LOCATION_JOB = re.compile(r"/api-jobs/([0-9A-Za-z]{32})")


@dataclass(frozen=True)
class Mutation:
    """One async API call: what to send, and what names it for :func:`job_uuid`."""

    rpc: str  # e.g. "AttachIso"
    method: str
    api_path: str
    query: list[tuple[str, str]]
    body: bytes | None
    #: The request's content, canonical: the same request gives the same key.
    key: str
    request_id: str


def job_uuid(identity: str, mutation: Mutation, attempt: int = 0) -> str:
    """The X-Job-UUID of ``mutation`` (32 hex characters, what ZStack accepts).

    With a ``request_id``: a BLAKE2b hash keyed with the caller's credential identity (itself a
    digest of the session, account or AccessKey, never a secret) over the RPC, the request's
    content, the request_id and ``attempt`` (0, or 1 for the one submission after a re-login).
    Without one: random."""
    if not mutation.request_id:
        return uuid.uuid4().hex
    text = "\x00".join((mutation.rpc, mutation.key, mutation.request_id, str(attempt)))
    return hashlib.blake2b(
        text.encode(), key=identity.encode()[:64], digest_size=16, person=b"zsgw-job-v1"
    ).hexdigest()


def location_job(body: bytes | bytearray, sent: str) -> str:
    """The job uuid of a 202's body: the last path segment of its ``location`` when that is
    ``/api-jobs/<32 characters>``, else the uuid the gateway sent (ZStack makes them equal)."""
    try:
        parsed = orjson.loads(body) if len(body) <= 64 * 1024 else None
    except orjson.JSONDecodeError:
        parsed = None
    location = parsed.get("location") if isinstance(parsed, dict) else None
    if isinstance(location, str):
        match = _LOCATION_JOB.search(location[-200:])
        if match is not None and location.endswith(match.group(0)):
            return match.group(1).lower()
    log.warning("ZStack's 202 has no readable job location; polling job %s as sent", sent)
    return sent


def stop_time(deadline: Deadline) -> float:
    """When the gateway stops waiting for a job (monotonic): before the caller's deadline by a
    margin that lets the status with the job's uuid reach the caller; the gateway's own budget
    otherwise."""
    if not deadline.from_caller:
        return deadline.expires_at
    caller_end = deadline.expires_at - CALLER_DEADLINE_SLACK
    total = max(0.0, caller_end - time.monotonic())
    return caller_end - min(STATUS_MARGIN, total / 5)


Accepted = Callable[[str], Awaitable[None]]


async def run(
    client: ZStackClient,
    mutation: Mutation,
    caller: CallerAuth,
    deadline: Deadline,
    accepted: Accepted,
) -> Reply:
    """Submit ``mutation`` as a job (or find it already submitted) and poll it to its end: the 200
    reply. ``accepted(job_uuid)`` runs once ZStack has the job, before the first poll."""
    stop_at = stop_time(deadline)
    budget = max(0.0, stop_at - time.monotonic())
    waiting = Deadline(stop_at, deadline.from_caller)
    for attempt in (0, 1):
        job = job_uuid(caller.identity, mutation, attempt)
        record = calls.current.get()
        if record is not None:
            record.job_uuid = job
        try:
            reply = await client.submit(
                mutation.method, mutation.api_path, mutation.query, mutation.body, job, caller, waiting
            )
        except errors.GatewayError as exc:
            if exc.reason != errors.Reason.ZSTACK_DUPLICATE_JOB:
                if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise errors.job_still_running(
                        job, budget, caller_deadline=deadline.from_caller, accepted=False
                    ) from exc
                raise
            log.info("ZStack already has job %s (%s): polling it", job, mutation.rpc)
        else:
            reply.account.close()
            polled = location_job(reply.body, job)
            if polled != job:
                log.warning("ZStack named job %s for X-Job-UUID %s; polling the one it named", polled, job)
                job = polled
                if record is not None:
                    record.job_uuid = job
        await accepted(job)
        try:
            return await _poll(client, job, caller, waiting, budget, mutation.api_path)
        except errors.GatewayError as exc:
            # A job that failed at the session check ran nothing, so a second job is safe.
            if (
                attempt == 0
                and is_invalid_session(exc)
                and await client.credentials.refresh_after_invalid_session(caller, exc)
            ):
                continue
            exc.info_metadata = {**exc.info_metadata, "jobUuid": job}
            raise
    raise errors.internal("the job loop ended without an outcome")  # pragma: no cover


async def _poll(
    client: ZStackClient, job: str, caller: CallerAuth, waiting: Deadline, budget: float, api_path: str
) -> Reply:
    """Poll ``job`` until it is done or ``waiting`` runs out; back off between polls."""
    pause = FIRST_POLL
    while True:
        left = waiting.remaining()
        if left <= 0:
            raise errors.job_still_running(job, budget, caller_deadline=waiting.from_caller, accepted=True)
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, MAX_POLL)
        if waiting.remaining() <= 0:
            continue
        try:
            reply = await client.poll_job(job, caller, waiting, api_path)
        except errors.GatewayError as exc:
            # A poll is a GET: a transport failure or a timed-out poll is tried again while there is
            # time; what ZStack says about the job (503, 404) is its outcome.
            if exc.reason in (errors.Reason.UPSTREAM_UNAVAILABLE, errors.Reason.UPSTREAM_DEADLINE_EXCEEDED):
                log.info("polling ZStack job %s failed (%s); trying again", job, exc.message)
                continue
            raise
        if reply.status == 200:
            return reply
        reply.account.close()  # 202: still running
