"""What a poll run is asked to do and what it did, and when an unfinished job is asked for again.

Kept apart from :mod:`jobtracker.poller` (the run itself) so the CLI, the demo and tests can use
the options, the summary and the schedule without the machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jobtracker.results import JobResult


@dataclass(slots=True)
class PollOptions:
    """Knobs of one poll run (the CLI exposes the useful ones)."""

    discover: bool = True
    concurrency: int = 8
    max_duration: float | None = None
    page_size: int = 500
    overlap_ms: int = 5 * 60 * 1000
    stale_after: timedelta = timedelta(days=7)
    list_threshold: int = 20
    sweep_interval: timedelta = timedelta(hours=1)
    batch_size: int = 200
    lease_ttl: timedelta = timedelta(minutes=10)


@dataclass(slots=True)
class PollSummary:
    """What one poll run did."""

    run_id: int | None = None
    outcome: str = "running"
    requests: int = 0
    jobs_seen: int = 0
    jobs_new: int = 0
    jobs_changed: int = 0
    jobs_failed: int = 0
    not_found: int = 0
    stale_ignored: int = 0
    unfinished: int = 0
    stale_jobs: int = 0
    duration_s: float = 0.0
    error: str | None = None
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering (without the per-job failure list)."""
        data = asdict(self)
        data.pop("failures")
        return data

    def line(self) -> str:
        """The one-line summary cron mails or logs."""
        return (
            f"poll {self.outcome}: {self.requests} requests, {self.jobs_seen} jobs seen, "
            f"{self.jobs_new} new, {self.jobs_changed} changed, {self.jobs_failed} failed, "
            f"{self.not_found} not found, {self.unfinished} unfinished ({self.stale_jobs} stale), "
            f"{self.duration_s:.1f}s"
        )


def next_poll_at(result: JobResult, now: datetime) -> datetime | None:
    """When to fetch this job again on its own: never once finished, else by its age."""
    if result.status.is_terminal:
        return None
    return now + next_poll_delay(now - (result.get_created_time() or now))


def next_poll_delay(age: timedelta, failures: int = 0) -> timedelta:
    """How long to wait before fetching an unfinished job again, by its age and failures."""
    if age < timedelta(hours=1):
        delay = timedelta(0)
    elif age < timedelta(hours=6):
        delay = timedelta(minutes=2)
    elif age < timedelta(days=1):
        delay = timedelta(minutes=10)
    elif age < timedelta(days=7):
        delay = timedelta(hours=1)
    else:
        delay = timedelta(hours=6)
    if failures:
        delay = max(delay, min(timedelta(minutes=2 ** min(failures, 9)), timedelta(hours=6)))
    return delay
