"""The simulated job: its schedule, its status at a given instant, and both response shapes.

A job's status is never stored.  It is a pure function of the clock and the job's schedule
(``created -> +queue -> started -> +run -> ended``), so advancing the clock is all it takes to
move every job along, and the same instant always yields the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QUEUED = "QUEUED"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED)
FINAL_STATUSES = (COMPLETED, FAILED)

#: ``sort_by`` values of the list endpoint.
SORT_KEYS = ("created", "started", "ended")

JsonDict = dict[str, Any]


@dataclass(slots=True)
class ResultUrls:
    """The three signed storage URLs a legacy job detail carries once completed."""

    predictions_url: str
    artifacts_url: str
    errors_url: str


@dataclass(slots=True)
class SimJob:
    """One simulated batch job.

    Times are integer epoch milliseconds so that comparisons are exact and several jobs can
    share one creation millisecond.  ``final_status``/``error`` say how the job ends; what the
    API reports at any moment comes from :meth:`status_at`.
    """

    job_id: str
    created_ms: int
    queue_ms: int
    run_ms: int
    final_status: str = COMPLETED
    error: str | None = None
    models: dict[str, JsonDict] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    files: list[dict[str, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    callback_url: str | None = None
    notify: bool = False
    legacy: bool = False
    num_predictions: int = 0
    num_errors: int = 0
    job_type: str = "INFERENCE"

    @property
    def started_ms(self) -> int:
        """When the job leaves the queue (epoch ms)."""
        return self.created_ms + self.queue_ms

    @property
    def ended_ms(self) -> int:
        """When the job reaches its final status (epoch ms)."""
        return self.started_ms + self.run_ms

    @property
    def created_at(self) -> float:
        """Creation time in epoch seconds."""
        return self.created_ms / 1000

    @property
    def started_at(self) -> float:
        """Start time in epoch seconds."""
        return self.started_ms / 1000

    @property
    def ended_at(self) -> float:
        """End time in epoch seconds."""
        return self.ended_ms / 1000

    def status_at(self, now_ms: int) -> str:
        """Return the status the API reports at ``now_ms``."""
        if now_ms < self.started_ms:
            return QUEUED
        if now_ms < self.ended_ms:
            return IN_PROGRESS
        return self.final_status

    def is_terminal_at(self, now_ms: int) -> bool:
        """Whether the job has reached its final status at ``now_ms``."""
        return now_ms >= self.ended_ms

    def timestamp_ms(self, key: str, now_ms: int) -> int | None:
        """The ``created``/``started``/``ended`` time if it has happened by ``now_ms``."""
        if key == "created":
            return self.created_ms
        value = self.started_ms if key == "started" else self.ended_ms
        return value if value <= now_ms else None


def render_current(job: SimJob, now_ms: int, *, stale: bool = False) -> JsonDict:
    """Render ``job`` in today's shape (``job_id``, ``request``, ``state``, ``type``).

    ``stale=True`` answers a finished job as if it were still running: the "stale read" a
    replicated backend can return right after a job ends.
    """
    status = job.status_at(now_ms)
    if stale and status in FINAL_STATUSES:
        status = IN_PROGRESS
    state: JsonDict = {"status": status, "created_timestamp_ms": job.created_ms}
    if status != QUEUED:
        state["started_timestamp_ms"] = job.started_ms
    if status in FINAL_STATUSES:
        state["ended_timestamp_ms"] = job.ended_ms
    if status == COMPLETED:
        state["num_predictions"] = job.num_predictions
        state["num_errors"] = job.num_errors
    elif status == FAILED:
        state["message"] = job.error
    return {
        "type": job.job_type,
        "job_id": job.job_id,
        "request": {
            "callback_url": job.callback_url,
            "files": job.files,
            "models": job.models,
            "notify": job.notify,
            "text": job.text,
            "urls": job.urls,
        },
        "state": state,
    }


def render_legacy(
    job: SimJob, now_ms: int, urls: ResultUrls | None, *, stale: bool = False
) -> JsonDict:
    """Render ``job`` in the 2022 shape (epoch-second timestamps, ``completed``/``failed``).

    ``urls`` are only used when the job is reported as completed; the caller signs them fresh
    on every fetch, like the real service did.
    """
    status = job.status_at(now_ms)
    if stale and status in FINAL_STATUSES:
        status = IN_PROGRESS
    body: JsonDict = {
        "status": status,
        "creation_timestamp": job.created_ms // 1000,
        "request": {"models": job.models, "urls": job.urls, "notify": job.notify},
    }
    if status in FINAL_STATUSES:
        body["completion_timestamp"] = job.ended_ms // 1000
    if status == COMPLETED:
        completed: JsonDict = {"num_errors": job.num_errors, "num_predictions": job.num_predictions}
        if urls is not None:
            completed["artifacts_url"] = urls.artifacts_url
            completed["errors_url"] = urls.errors_url
            completed["predictions_url"] = urls.predictions_url
        body["completed"] = completed
    elif status == FAILED:
        body["failed"] = {"message": job.error}
    return body
