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

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update

from jobtracker import leases
from jobtracker.client import BatchClient
from jobtracker.errors import ApiError, AuthError, JobNotFound, JobTrackerError, ParseError
from jobtracker.parse import parse_response
from jobtracker.poll_types import PollOptions, PollSummary, next_poll_at, next_poll_delay
from jobtracker.queries import get_state
from jobtracker.results import JobResult, JobStatus
from jobtracker.schema import jobs, poll_runs, tracked_jobs
from jobtracker.store import set_state, write_results

__all__ = ["PollOptions", "PollSummary", "Poller", "next_poll_delay"]

if TYPE_CHECKING:
    from jobtracker.tracker import Tracker

log = logging.getLogger("jobtracker.poller")

CURSOR_KEY = "discover.created_ms"
SWEEP_KEY = "refresh.sweep_at"
REFRESH_KEY = "refresh.last_at"
# Allowance for the API's clock (and its listings) running behind ours when its start times are
# compared with our last run. Missing a start costs little: the job's final state comes from
# the finished listing, which is complete by construction, and the hourly sweep sees the rest.
_CLOCK_SLACK = timedelta(minutes=1)
# Unfinished jobs younger than this are refreshed through the list endpoint; older ones are
# fetched one by one on their backoff schedule, so one stuck job cannot make every listing
# reach back days.
_LISTABLE_AGE = timedelta(days=1)
LEASE_NAME = "poll"
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value)
# Every paging loop stops here even if the API keeps answering full pages.
_MAX_PAGES = 10_000


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
        self._renewed_at = datetime.min.replace(tzinfo=UTC)
        self._cursor_written: int | None = None
        # Written with the run record, and only when the refresh got to its end.
        self._state_on_success: dict[str, str] = {}

    # --- the run --------------------------------------------------------------------------

    def run(self) -> PollSummary:
        """Take the lease, poll, record the run; raises LockHeld (75) or AuthError (3)."""
        self._started = time.monotonic()
        self._requests_at_start = self.client.requests_made
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            leases.acquire(conn, LEASE_NAME, self.holder, now=now, ttl=self.options.lease_ttl)
            self._renewed_at = now
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
            # Holding the lease, no other poll runs: a row still "running" belongs to a poller
            # that was killed (SIGKILL, OOM, power cut) and will never finish it.
            conn.execute(
                update(poll_runs)
                .where(
                    poll_runs.c.command == "poll",
                    poll_runs.c.outcome == "running",
                    poll_runs.c.id != self.summary.run_id,
                )
                .values(outcome="abandoned", error="the poller stopped without finishing")
            )
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
        except BaseException as exc:
            # A second Ctrl-C, a database error, a bug: the run row must still say how it ended.
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.summary.outcome = "interrupted" if interrupted else "failed"
            self.summary.error = None if interrupted else f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            self._finish()
        return self.summary

    def _finish(self) -> None:
        s = self.summary
        s.requests = self.client.requests_made - self._requests_at_start
        s.duration_s = time.monotonic() - self._started
        now = self.tracker.clock()
        with self.tracker.write() as conn:
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
            if s.outcome in ("ok", "partial"):
                for key, value in self._state_on_success.items():
                    set_state(conn, key, value, now)
            leases.release(conn, LEASE_NAME, self.holder)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stop("interrupted")
        limit = self.options.max_duration
        if limit is not None and time.monotonic() - self._started > limit:
            raise _Stop("time_limit")

    # --- writing --------------------------------------------------------------------------

    def _store(
        self,
        results: Sequence[tuple[JobResult, Any]],
        *,
        cursor_ms: int | None = None,
        fetched: bool = False,
    ) -> None:
        """Write one batch with each job's next-poll time, and renew the lease.

        ``fetched`` marks jobs asked for one by one: even unchanged, they are stamped polled
        and rescheduled; jobs seen in passing in a listing are only written when they changed.
        """
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            # Renew the lease a few times per TTL, not on every page: a page of unchanged jobs
            # then writes nothing at all.
            if now - self._renewed_at >= self.options.lease_ttl / 4:
                leases.renew(conn, LEASE_NAME, self.holder, now=now, ttl=self.options.lease_ttl)
                self._renewed_at = now
            if results:
                stats = write_results(
                    conn,
                    results,
                    now=now,
                    polled=True,
                    touch_unchanged=fetched,
                    next_poll=lambda r: next_poll_at(r, now),
                )
                self.summary.jobs_new += stats.inserted
                self.summary.jobs_changed += stats.updated
                self.summary.stale_ignored += stats.stale
            if cursor_ms is not None and cursor_ms != self._cursor_written:
                set_state(conn, CURSOR_KEY, str(cursor_ms), now)
                self._cursor_written = cursor_ms

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
            self._see(result.job_id)
            out.append((result, payload))
        return out, newest

    def _next_after(self, page: Sequence[Any], top: int | None, after: int) -> int | None:
        """The ``created_after`` of the next page, or ``None`` when paging is done.

        The next page starts one millisecond before the newest job seen, so jobs sharing that
        millisecond across a page boundary are not skipped (re-reading one is free: it is
        unchanged). Paging ends on an empty page or one that brings nothing newer, which does
        not rely on the server honouring our ``limit`` (it may cap it lower).
        """
        if not page or top is None or top - 1 <= after:
            if len(page) >= self.options.page_size:
                # The API pages by time only: jobs past a full page in one millisecond cannot
                # be listed. Say so (outcome "partial") rather than lose them silently.
                self._fail(
                    None,
                    "a full page of jobs shares one creation millisecond; "
                    "those past the page were not listed",
                )
            return None
        return top - 1

    def _see(self, job_id: str) -> None:
        # Pages overlap by a millisecond; a job counts once however often it is read.
        if job_id not in self._seen:
            self._seen.add(job_id)
            self.summary.jobs_seen += 1

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
        self._cursor_written = cursor
        # 0, not -1, on the first run: no job predates 1970, and an API may refuse a negative
        # timestamp.
        after = 0 if cursor is None else max(cursor - self.options.overlap_ms, 0)
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
            next_after = self._next_after(page, top, after)
            if next_after is None:
                return
            after = next_after
        log.warning("discovery stopped after %d pages", _MAX_PAGES)

    # --- refresh --------------------------------------------------------------------------

    def _due(self) -> tuple[dict[str, tuple[datetime | None, str]], list[str]]:
        """Unfinished jobs due for a refresh, and tracked ids never fetched.

        The first maps each job id to its creation time and response shape.
        """
        now = self.tracker.clock()
        with self.tracker.read() as conn:
            due = {
                job_id: (created, shape)
                for job_id, created, shape in conn.execute(
                    select(jobs.c.job_id, jobs.c.created_at, jobs.c.response_shape).where(
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
        """Refresh due unfinished jobs, asking the list endpoint first where that is cheaper.

        Jobs the list endpoint shows (today's shape, created in the last day) are refreshed by
        listing; the rest (legacy and tracked-but-never-listed ids, and old jobs on their
        backoff schedule) are fetched one by one.

        * A normal run lists the *finished* jobs created since the oldest due one (those are
          exactly the jobs that changed, plus finished ones already known) and one page of the
          most recently started jobs; due jobs in neither are still unfinished and unchanged,
          and cost nothing.
        * A sweep run (every ``sweep_interval``) lists the *unfinished* jobs instead and fetches
          every due job that left that list one by one, so anything a listing missed (a job
          deleted on the API side, a status that changed while pages were read) is caught.
        """
        due, fresh = self._due()
        now = self.tracker.clock()
        listable = {
            job_id: created
            for job_id, (created, shape) in due.items()
            if shape == "current" and created is not None and now - created < _LISTABLE_AGE
        }
        single = [job_id for job_id in due if job_id not in listable]
        if len(listable) < self.options.list_threshold or self._sweep_due(now):
            # Every listable due job gets fresh data this run (one by one, or the unfinished
            # listing plus a GET for each job that left it): that is a sweep.
            if len(listable) >= self.options.list_threshold:
                self._list(listable, list(_UNFINISHED))
            single.extend(listable)
            self._state_on_success[SWEEP_KEY] = now.isoformat()
        else:
            with self.tracker.read() as conn:
                last = get_state(conn, REFRESH_KEY)
            since = None if last is None else datetime.fromisoformat(last) - _CLOCK_SLACK
            self._list(listable, [JobStatus.COMPLETED.value, JobStatus.FAILED.value])
            self._recent_starts(listable, since)
        self._fetch_each([*single, *fresh])
        self._state_on_success[REFRESH_KEY] = now.isoformat()

    def _sweep_due(self, now: datetime) -> bool:
        with self.tracker.read() as conn:
            last = get_state(conn, SWEEP_KEY)
        return last is None or now - datetime.fromisoformat(last) >= self.options.sweep_interval

    def _list(self, due: dict[str, datetime], statuses: list[str]) -> None:
        """List jobs with ``statuses`` created since the oldest due job.

        Every due job the listing shows is stored and dropped from ``due``.
        """
        after = int(min(due.values()).timestamp() * 1000) - 1
        for _ in range(_MAX_PAGES):
            self._check_stop()
            page = self.client.list_jobs(
                limit=self.options.page_size,
                status=statuses,
                when="created_after",
                timestamp_ms=after,
                sort_by="created",
                direction="asc",
            )
            results, top = self._parse_page(page, set(due))
            for result, _ in results:
                due.pop(result.job_id or "", None)
            self._store(results)
            next_after = self._next_after(page, top, after)
            if next_after is None or not due:
                return
            after = next_after

    def _recent_starts(self, due: dict[str, datetime], since: datetime | None) -> None:
        """Catch QUEUED -> IN_PROGRESS: one page of the most recently started jobs.

        When that page is full and reaches back no further than the previous refresh (more
        jobs started since than one page holds), the running jobs created since the oldest due
        one are listed instead.
        """
        self._check_stop()
        page = self.client.list_jobs(
            limit=self.options.page_size,
            status=[JobStatus.IN_PROGRESS.value],
            sort_by="started",
            direction="desc",
        )
        results, _ = self._parse_page(page, set(due))
        running = [(r, p) for r, p in results if r.status is JobStatus.IN_PROGRESS]
        for result, _ in running:
            due.pop(result.job_id or "", None)
        self._store(running)
        started = [_started_ms(p) for p in page]
        oldest = min((s for s in started if s is not None), default=None)
        reaches_back = (
            since is not None and oldest is not None and oldest < since.timestamp() * 1000
        )
        if len(page) >= self.options.page_size and not reaches_back and due:
            self._list(due, [JobStatus.IN_PROGRESS.value])

    def _fetch_each(self, ids: Sequence[str]) -> None:
        """GET each job with bounded concurrency; store results in batches as they arrive."""
        if not ids:
            return
        self._check_stop()
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
                while len(running) < self.options.concurrency * 2 and not self.stop.is_set():
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
                # Requests already in flight finish (each is bounded by the client's timeouts
                # and retry budget); their answers are kept, like everything that arrived.
                started = [f for f in running if not f.cancelled()]
                if started:
                    wait(started)
                for future in started:
                    # The run is already ending; a first AuthError is the one raised.
                    with contextlib.suppress(AuthError):
                        self._collect(running[future], future, pending, failed, missing)
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
        self._see(job_id)
        pending.append((result, payload))

    def _store_fetched(
        self, pending: list[tuple[JobResult, Any]], failed: list[dict[str, Any]], missing: list[str]
    ) -> None:
        if not (pending or failed or missing):
            return
        self._store(pending, fetched=True)
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            known = {
                row.job_id: row
                for row in conn.execute(
                    select(jobs.c.job_id, jobs.c.created_at, jobs.c.poll_failures).where(
                        jobs.c.job_id.in_([f["b_id"] for f in failed])
                    )
                )
            }
            for item in failed:
                row = known.get(item["b_id"])
                if row is None:
                    continue  # a tracked id never fetched: asked for again next run
                failures = row.poll_failures + 1
                age = now - (row.created_at or now)
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == item["b_id"])
                    .values(
                        poll_failures=failures,
                        last_poll_error=item["error"],
                        next_poll_at=now + next_poll_delay(age, failures),
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


def _started_ms(payload: Any) -> int | None:
    """``state.started_timestamp_ms`` of a raw list item, if it is a plain integer."""
    state = payload.get("state") if isinstance(payload, dict) else None
    value = state.get("started_timestamp_ms") if isinstance(state, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
