"""Job status and the parsed result of one batch job (seed-compatible names).

``JobResult`` keeps the attribute and method names of the SDK's ``BatchJobResult`` so SDK users
feel at home (``configs``, ``urls``, ``status``, ``predictions_url``, ``get_run_time()``...), and
adds what a tracker needs (job id, created/started/ended times, counts, all inputs). Times are
kept as integer epoch milliseconds, the API's own resolution; the seed's epoch-second attributes
are derived from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobStatus(enum.StrEnum):
    """Status of a batch job, stored as text."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more (completed or failed)."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)

    @property
    def rank(self) -> int:
        """Position in the lifecycle; a status never moves to a lower rank."""
        return _RANK[self]


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.IN_PROGRESS: 1,
    JobStatus.COMPLETED: 2,
    JobStatus.FAILED: 2,
}


def ms_to_datetime(ms: int | None) -> datetime | None:
    """Epoch milliseconds to a timezone-aware UTC datetime (``None`` stays ``None``)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(slots=True)
class JobResult:
    """One batch job as the API last described it.

    ``configs`` maps each model name to its raw config dict; unknown models are kept as they
    are, because the API grows new models. ``created_ms``/``started_ms``/``ended_ms`` are epoch
    milliseconds; the legacy shape has whole seconds and no started time.
    """

    job_id: str | None
    status: JobStatus
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    callback_url: str | None = None
    notify: bool | None = None
    job_type: str | None = None
    predictions_url: str | None = None
    artifacts_url: str | None = None
    errors_url: str | None = None
    error_message: str | None = None
    created_ms: int | None = None
    started_ms: int | None = None
    ended_ms: int | None = None
    num_predictions: int | None = None
    num_errors: int | None = None
    shape: str = "current"

    # --- seed-compatible accessors -------------------------------------------------------

    @property
    def job_start_time(self) -> float | None:
        """Epoch seconds the run started: the started time, else the creation time (seed)."""
        start = self.started_ms if self.started_ms is not None else self.created_ms
        return None if start is None else start / 1000

    @property
    def job_end_time(self) -> float | None:
        """Epoch seconds the job ended, or ``None`` while it runs."""
        return None if self.ended_ms is None else self.ended_ms / 1000

    def get_run_time(self) -> float | None:
        """Seconds from start to end, or ``None`` until the job has ended.

        As in the seed, the start is the started time when the payload has one and the creation
        time otherwise (the legacy shape has no started time).
        """
        start = self.started_ms if self.started_ms is not None else self.created_ms
        if start is None or self.ended_ms is None:
            return None
        return (self.ended_ms - start) / 1000

    def get_queue_time(self) -> float | None:
        """Seconds from creation to start, or ``None`` when either is unknown."""
        if self.created_ms is None or self.started_ms is None:
            return None
        return (self.started_ms - self.created_ms) / 1000

    def get_start_time(self) -> datetime | None:
        """Timezone-aware UTC time the run started (see :meth:`get_run_time`)."""
        start = self.started_ms if self.started_ms is not None else self.created_ms
        return ms_to_datetime(start)

    def get_end_time(self) -> datetime | None:
        """Timezone-aware UTC time the job ended, or ``None`` while it runs."""
        return ms_to_datetime(self.ended_ms)

    def get_created_time(self) -> datetime | None:
        """Timezone-aware UTC time the job was created."""
        return ms_to_datetime(self.created_ms)

    def get_error_message(self) -> str | None:
        """The job's error message, if it failed with one."""
        return self.error_message

    def download_urls(self) -> dict[str, str | None]:
        """Result files this job has, by kind; ``None`` means "fetch from the API endpoint".

        Empty until the job has completed.
        """
        if self.status is not JobStatus.COMPLETED:
            return {}
        if self.shape == "legacy":
            found = {
                "predictions": self.predictions_url,
                "artifacts": self.artifacts_url,
                "errors": self.errors_url,
            }
            return {kind: url for kind, url in found.items() if url}
        return {"predictions": None, "artifacts": None}
