"""ZStack's async job store (``AsyncRestVO`` and ``RestServer.handleJobQuery``, iso-workflow §7).

An async API (POST/PUT/DELETE of attach and detach) is accepted with 202 and a job; the job's
``X-Job-UUID`` (or a random id) is its uuid. While it runs, ``GET /v1/api-jobs/{uuid}`` answers 202
``{}``; once done, 200 with the API's body or 503 with ``{"error": ...}``; a job that is unknown, or
done and older than the retention (``rest.completedApi.expiredPeriod``, 10800 s), answers 404
``the job has been expired``. A job still running is never purged. While a job's row exists, a
POST/PUT/DELETE carrying its uuid as ``X-Job-UUID`` is refused with 400 ``Duplicate job uuid[...]``.

Times are on the simulator's clock (``SimState.now``), so ``POST /_sim/clock`` ages jobs too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zstack_sim.replies import Reply

__all__ = ["Job", "JobStore"]


@dataclass
class Job:
    uuid: str
    api: str  # the API's name, e.g. "AttachIsoToVmInstance"
    method: str
    path: str
    created_at: float
    #: Set once done: the poll's answer (200 or 503).
    reply: Reply | None = None
    done_at: float | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "api": self.api,
            "method": self.method,
            "path": self.path,
            "createdAt": self.created_at,
            "done": self.done,
            "status": self.reply.status if self.reply is not None else None,
        }


@dataclass
class JobStore:
    now: Callable[[], float]
    retention: Callable[[], float]
    jobs: dict[str, Job] = field(default_factory=dict)
    #: Every job ever accepted, in order (also those purged since), for tests counting executions.
    accepted: list[str] = field(default_factory=list)

    def _purge(self) -> None:
        limit = self.now() - self.retention()
        for uuid in [u for u, j in self.jobs.items() if j.done and j.created_at < limit]:
            del self.jobs[uuid]

    def exists(self, uuid: str) -> bool:
        self._purge()
        return uuid in self.jobs

    def get(self, uuid: str) -> Job | None:
        self._purge()
        return self.jobs.get(uuid)

    def create(self, uuid: str, api: str, method: str, path: str) -> Job:
        job = Job(uuid, api, method, path, self.now())
        self.jobs[uuid] = job
        self.accepted.append(uuid)
        return job

    def finish(self, job: Job, reply: Reply) -> bool:
        """Record ``job``'s outcome; False when the job is no longer in this store (a reset)."""
        if self.jobs.get(job.uuid) is not job:
            return False
        job.reply = reply
        job.done_at = self.now()
        return True

    def to_json(self) -> dict[str, Any]:
        self._purge()
        return {"jobs": [j.to_json() for j in self.jobs.values()], "accepted": list(self.accepted)}
