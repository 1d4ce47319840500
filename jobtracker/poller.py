"""One poll cycle: discover new jobs, refresh unfinished ones, store what changed.

Requests per run grow with the number of jobs that changed, not with the number tracked:

1. **Discover** pages through ``GET /v0/batch/jobs`` by creation time, ascending, from a
   persisted cursor minus a small overlap window (jobs sharing a millisecond, late arrivals).
2. **Refresh** the unfinished jobs that are due. When there are many, one listing of the
   unfinished jobs (``status=QUEUED&status=IN_PROGRESS``, from the oldest due job on) refreshes
   all that are still unfinished in a few pages; only the jobs that left that list — finished,
   or never listed (legacy and tracked ids) — are fetched one by one, with bounded concurrency.
3. Each job that is still unfinished gets a next-poll time that backs off with its age, so old,
   slow jobs do not cost every run; past ``stale_after`` it is counted as stale.

Everything is written in batches, each committed, so an interrupted run keeps what it fetched.
The poller prints nothing; it returns a :class:`PollSummary`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, or_, select, update

from jobtracker import leases
from jobtracker.client import BatchClient
from jobtracker.errors import ApiError, AuthError, JobNotFound, JobTrackerError, ParseError
from jobtracker.parse import parse_response
from jobtracker.queries import get_state
from jobtracker.results import JobResult, JobStatus
from jobtracker.schema import jobs, poll_runs, tracked_jobs
from jobtracker.store import set_state, write_results

if TYPE_CHECKING:
    from jobtracker.tracker import Tracker

log = logging.getLogger("jobtracker.poller")

CURSOR_KEY = "discover.created_ms"
LEASE_NAME = "poll"
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value)
# Every paging loop stops here even if the API keeps answering full pages.
_MAX_PAGES = 10_000


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


class _Stop(Exception):
    """Internal: the run must end now (signal or time limit)."""


class Poller:
    """Runs one poll cycle for a :class:`Tracker` with a :class:`BatchClient`."""

    def __init__(
        self,
        tracker: Tracker,
        client: BatchClient,
        options: PollOptions | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.tracker = tracker
        self.client = client
        self.options = options or PollOptions()
        self.stop = stop or threading.Event()
        self.holder = leases.new_holder()
        self.summary = PollSummary()
        self._started = 0.0
        self._requests_at_start = 0
        self._seen: set[str] = set()

    # --- the run --------------------------------------------------------------------------

    def run(self) -> PollSummary:
        """Take the lease, poll, record the run; raises LockHeld (75) or AuthError (3)."""
        self._started = time.monotonic()
        self._requests_at_start = self.client.requests_made
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            leases.acquire(conn, LEASE_NAME, self.holder, now=now, ttl=self.options.lease_ttl)
            self.summary.run_id = conn.execute(
                poll_runs.insert()
                .values(
                    command="poll",
                    started_at=now,
                    host=self.holder.rsplit(":", 2)[0],
                    pid=int(self.holder.rsplit(":", 2)[1]),
                    outcome="running",
                )
                .returning(poll_runs.c.id)
            ).scalar_one()
        try:
            if self.options.discover:
                self._discover()
            self._refresh()
            self.summary.outcome = "partial" if self.summary.jobs_failed else "ok"
        except _Stop as stop:
            self.summary.outcome = str(stop)
        except AuthError as exc:
            self.summary.outcome, self.summary.error = "failed", str(exc)
            raise
        except JobTrackerError as exc:
            self.summary.outcome, self.summary.error = "failed", str(exc)
        finally:
            self._finish()
        return self.summary

    def _finish(self) -> None:
        s = self.summary
        s.requests = self.client.requests_made - self._requests_at_start
        s.duration_s = time.monotonic() - self._started
        now = self.tracker.clock()
        with self.tracker.read() as conn:
            unfinished = conn.execute(
                select(func.count(), func.min(jobs.c.created_at)).where(
                    jobs.c.status.in_(_UNFINISHED), jobs.c.not_found_at.is_(None)
                )
            ).one()
            s.unfinished = unfinished[0]
            s.stale_jobs = conn.execute(
                select(func.count()).where(
                    jobs.c.status.in_(_UNFINISHED),
                    jobs.c.not_found_at.is_(None),
                    jobs.c.created_at < now - self.options.stale_after,
                )
            ).scalar_one()
        with self.tracker.write() as conn:
            conn.execute(
                update(poll_runs)
                .where(poll_runs.c.id == s.run_id)
                .values(
                    finished_at=now,
                    outcome=s.outcome,
                    requests=s.requests,
                    jobs_seen=s.jobs_seen,
                    jobs_changed=s.jobs_new + s.jobs_changed,
                    jobs_failed=s.jobs_failed,
                    error=s.error,
                )
            )
            leases.release(conn, LEASE_NAME, self.holder)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stop("interrupted")
        limit = self.options.max_duration
        if limit is not None and time.monotonic() - self._started > limit:
            raise _Stop("time_limit")

    # --- writing --------------------------------------------------------------------------

    def _store(
        self, results: Sequence[tuple[JobResult, Any]], *, cursor_ms: int | None = None
    ) -> None:
        """Write one batch, schedule the next poll of unfinished jobs, renew the lease."""
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            leases.renew(conn, LEASE_NAME, self.holder, now=now, ttl=self.options.lease_ttl)
            if results:
                stats = write_results(conn, results, now=now, polled=True)
                self.summary.jobs_new += stats.inserted
                self.summary.jobs_changed += stats.updated
                self.summary.stale_ignored += stats.stale
                schedule = [
                    {
                        "b_id": r.job_id,
                        "next_poll_at": now + next_poll_delay(now - (r.get_created_time() or now)),
                    }
                    for r, _ in results
                    if not r.status.is_terminal
                ]
                done = [
                    {"b_id": r.job_id, "next_poll_at": None}
                    for r, _ in results
                    if r.status.is_terminal
                ]
                for rows in (schedule, done):
                    if rows:
                        conn.execute(
                            update(jobs)
                            .where(jobs.c.job_id == bindparam("b_id"))
                            .values(
                                next_poll_at=bindparam("next_poll_at"),
                                poll_failures=0,
                                last_poll_error=None,
                            ),
                            rows,
                        )
            if cursor_ms is not None:
                set_state(conn, CURSOR_KEY, str(cursor_ms), now)

    def _parse_page(
        self, page: Iterable[Any], only_known: set[str] | None
    ) -> tuple[list[tuple[JobResult, Any]], int | None]:
        """The page's jobs to store, and the newest creation time on the page (for paging)."""
        out = []
        newest: int | None = None
        for payload in page:
            try:
                result = parse_response(payload)
            except ParseError as exc:
                self._fail(None, f"unparseable job in list: {exc}")
                continue
            if result.job_id is None:
                self._fail(None, "job in list has no job_id")
                continue
            if result.created_ms is not None:
                newest = result.created_ms if newest is None else max(newest, result.created_ms)
            if only_known is not None and result.job_id not in only_known:
                continue
            self._seen.add(result.job_id)
            self.summary.jobs_seen += 1
            out.append((result, payload))
        return out, newest

    def _fail(self, job_id: str | None, message: str) -> None:
        self.summary.jobs_failed += 1
        if len(self.summary.failures) < 100:
            self.summary.failures.append(f"{job_id}: {message}" if job_id else message)
        log.warning("%s%s", f"job {job_id}: " if job_id else "", message)

    # --- discovery ------------------------------------------------------------------------

    def _discover(self) -> None:
        with self.tracker.read() as conn:
            stored = get_state(conn, CURSOR_KEY)
        cursor = int(stored) if stored else None
        after = -1 if cursor is None else max(cursor - self.options.overlap_ms, -1)
        newest = cursor or 0
        for _ in range(_MAX_PAGES):
            self._check_stop()
            page = self.client.list_jobs(
                limit=self.options.page_size,
                when="created_after",
                timestamp_ms=after,
                sort_by="created",
                direction="asc",
            )
            results, top = self._parse_page(page, None)
            newest = max(newest, top or 0)
            self._store(results, cursor_ms=newest)
            next_after = _next_after(page, top, after, self.options.page_size)
            if next_after is None:
                return
            after = next_after
        log.warning("discovery stopped after %d pages", _MAX_PAGES)

    # --- refresh --------------------------------------------------------------------------

    def _due(self) -> tuple[dict[str, datetime | None], list[str]]:
        """Unfinished jobs due for a refresh (id -> created time), and tracked ids never fetched."""
        now = self.tracker.clock()
        with self.tracker.read() as conn:
            due = {
                job_id: created
                for job_id, created in conn.execute(
                    select(jobs.c.job_id, jobs.c.created_at).where(
                        jobs.c.status.in_(_UNFINISHED),
                        jobs.c.not_found_at.is_(None),
                        or_(jobs.c.next_poll_at.is_(None), jobs.c.next_poll_at <= now),
                    )
                )
                if job_id not in self._seen
            }
            fresh = [
                job_id
                for (job_id,) in conn.execute(
                    select(tracked_jobs.c.job_id)
                    .outerjoin(jobs, jobs.c.job_id == tracked_jobs.c.job_id)
                    .where(jobs.c.job_id.is_(None), tracked_jobs.c.not_found_at.is_(None))
                )
            ]
        return due, fresh

    def _refresh(self) -> None:
        due, fresh = self._due()
        if len(due) >= self.options.list_threshold:
            self._list_unfinished(due)
        self._fetch_each([*due, *fresh])

    def _list_unfinished(self, due: dict[str, datetime | None]) -> None:
        known = set(due) if not self.options.discover else None
        oldest = min((c for c in due.values() if c is not None), default=None)
        after = -1 if oldest is None else int(oldest.timestamp() * 1000) - 1
        for _ in range(_MAX_PAGES):
            self._check_stop()
            page = self.client.list_jobs(
                limit=self.options.page_size,
                status=list(_UNFINISHED),
                when="created_after",
                timestamp_ms=after,
                sort_by="created",
                direction="asc",
            )
            results, top = self._parse_page(page, known)
            for result, _ in results:
                due.pop(result.job_id or "", None)
            self._store(results)
            next_after = _next_after(page, top, after, self.options.page_size)
            if next_after is None:
                return
            after = next_after

    def _fetch_each(self, ids: Sequence[str]) -> None:
        """GET each job with bounded concurrency; store results in batches as they arrive."""
        if not ids:
            return
        pending: list[tuple[JobResult, Any]] = []
        failed: list[dict[str, Any]] = []
        missing: list[str] = []
        todo = iter(ids)
        with ThreadPoolExecutor(
            max_workers=self.options.concurrency, thread_name_prefix="poll"
        ) as pool:
            running: dict[Future[Any], str] = {}

            def submit_more() -> None:
                # Keep the queue short, so a stop request leaves little unfinished work.
                while len(running) < self.options.concurrency * 2:
                    job_id = next(todo, None)
                    if job_id is None:
                        return
                    running[pool.submit(self.client.get_job, job_id)] = job_id

            try:
                submit_more()
                while running:
                    self._check_stop()
                    done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        job_id = running.pop(future)
                        self._collect(job_id, future, pending, failed, missing)
                    if len(pending) + len(failed) + len(missing) >= self.options.batch_size:
                        self._store_fetched(pending, failed, missing)
                        pending, failed, missing = [], [], []
                    submit_more()
            finally:
                for future in running:
                    future.cancel()
                # Whatever arrived before a stop is still written.
                self._store_fetched(pending, failed, missing)

    def _collect(
        self,
        job_id: str,
        future: Future[Any],
        pending: list[tuple[JobResult, Any]],
        failed: list[dict[str, Any]],
        missing: list[str],
    ) -> None:
        try:
            payload = future.result()
            result = parse_response(payload, job_id)
        except AuthError:
            raise
        except JobNotFound:
            self.summary.not_found += 1
            missing.append(job_id)
            return
        except (ApiError, ParseError) as exc:
            self._fail(job_id, str(exc))
            failed.append({"b_id": job_id, "error": str(exc)[:500]})
            return
        self._seen.add(job_id)
        self.summary.jobs_seen += 1
        pending.append((result, payload))

    def _store_fetched(
        self, pending: list[tuple[JobResult, Any]], failed: list[dict[str, Any]], missing: list[str]
    ) -> None:
        if not (pending or failed or missing):
            return
        self._store(pending)
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            for row in failed:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == row["b_id"])
                    .values(
                        poll_failures=jobs.c.poll_failures + 1,
                        last_poll_error=row["error"],
                        next_poll_at=now + next_poll_delay(timedelta(0), 1),
                    )
                )
            if missing:
                conn.execute(
                    update(jobs).where(jobs.c.job_id.in_(missing)).values(not_found_at=now)
                )
                conn.execute(
                    update(tracked_jobs)
                    .where(tracked_jobs.c.job_id.in_(missing))
                    .values(not_found_at=now)
                )


def _next_after(page: Sequence[Any], top: int | None, after: int, page_size: int) -> int | None:
    """The ``created_after`` of the next page, or ``None`` when paging is done.

    The next page starts one millisecond before the newest job seen, so jobs sharing that
    millisecond across a page boundary are not skipped (re-reading one is free: it is
    unchanged). Paging ends on an empty page or one that brings nothing newer, which does not
    rely on the server honouring our ``limit`` (it may cap it lower).
    """
    if not page or top is None or top - 1 <= after:
        if len(page) >= page_size:
            log.warning(
                "a full page of jobs shares one creation millisecond; some may be missed "
                "until they change"
            )
        return None
    return top - 1
