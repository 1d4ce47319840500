"""Fetch every outstanding result file and record what was fetched.

A run claims a few downloads at a time (``claimed_by``/``claim_expires_at`` on the row, taken
inside a serialised write transaction, so two downloaders never fetch the same file), fetches
them with bounded concurrency (:mod:`jobtracker.fetch`), and records each outcome: size, sha256
and path when done; attempts and the last error otherwise, until ``max_attempts`` marks the file
failed. Signed URLs that will expire soonest are fetched first; one that has expired (or that the
storage host refuses) makes the downloader refresh the job through the API for fresh URLs and
try again once in the same run. The downloader prints nothing; it returns a summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, or_, select, tuple_, update

from jobtracker import leases
from jobtracker.client import BatchClient
from jobtracker.errors import AuthError, JobTrackerError
from jobtracker.fetch import FetchOutcome, FetchTask, fetch, hash_file
from jobtracker.layout import file_path, fsync_dir
from jobtracker.parse import parse_response
from jobtracker.schema import downloads, poll_runs
from jobtracker.store import write_results

if TYPE_CHECKING:
    from jobtracker.tracker import Tracker

log = logging.getLogger("jobtracker.downloads")

ProgressFn = Callable[[int, int, int], None]
# Seconds between renewals of this run's claims (well inside the claim TTL).
_RENEW_EVERY_S = 60.0


@dataclass(slots=True)
class DownloadOptions:
    """What to fetch and how hard to try."""

    dest: Path
    kind: str | None = None
    job_id: str | None = None
    concurrency: int = 4
    retry_failed: bool = False
    max_attempts: int = 5
    claim_ttl: timedelta = timedelta(hours=1)
    max_duration: float | None = None


@dataclass(slots=True)
class DownloadSummary:
    """What one download run did."""

    run_id: int | None = None
    outcome: str = "running"
    files_done: int = 0
    files_failed: int = 0
    files_gave_up: int = 0
    bytes: int = 0
    refreshed: int = 0
    requests: int = 0
    duration_s: float = 0.0
    dest: str = ""
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering (without the per-file failure list)."""
        data = asdict(self)
        data.pop("failures")
        return data

    def line(self) -> str:
        """The one-line summary cron mails or logs."""
        return (
            f"download {self.outcome}: {self.files_done} files ({self.bytes / 1e6:.1f} MB) "
            f"into {self.dest}, {self.files_failed} failed attempts, {self.files_gave_up} "
            f"marked failed, {self.refreshed} expired URLs refreshed, {self.duration_s:.1f}s"
        )


@dataclass(frozen=True, slots=True)
class VerifySummary:
    """What ``downloads verify`` found."""

    checked: int
    ok: int
    missing: int
    changed: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering."""
        return asdict(self)


class Downloader:
    """One download run for a :class:`Tracker` with a :class:`BatchClient`."""

    def __init__(
        self,
        tracker: Tracker,
        client: BatchClient,
        options: DownloadOptions,
        stop: threading.Event | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self.tracker = tracker
        self.client = client
        self.options = options
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.holder = leases.new_holder()
        self.summary = DownloadSummary(dest=str(options.dest))
        self._total = 0
        self._started = 0.0
        self._refreshed_jobs: set[str] = set()

    def run(self) -> DownloadSummary:
        """Fetch everything outstanding (that matches the options); record the run."""
        self._started = time.monotonic()
        requests_before = self.client.requests_made
        now = self.tracker.clock()
        host, pid, _ = self.holder.rsplit(":", 2)
        with self.tracker.write() as conn:
            self.summary.run_id = conn.execute(
                poll_runs.insert()
                .values(
                    command="download", started_at=now, host=host, pid=int(pid), outcome="running"
                )
                .returning(poll_runs.c.id)
            ).scalar_one()
        error: str | None = None
        try:
            self._release_dead_claims()
            self._total = self._count()
            self._loop()
            if self.stop.is_set():
                self.summary.outcome = "interrupted"
            elif self._over_time():
                self.summary.outcome = "time_limit"
            else:
                self.summary.outcome = "partial" if self.summary.files_failed else "ok"
        except AuthError as exc:
            self.summary.outcome, error = "failed", str(exc)
            raise
        except JobTrackerError as exc:
            self.summary.outcome, error = "failed", str(exc)
        finally:
            self.summary.requests = self.client.requests_made - requests_before
            self.summary.duration_s = time.monotonic() - self._started
            with self.tracker.write() as conn:
                conn.execute(
                    update(downloads)
                    .where(downloads.c.claimed_by == self.holder)
                    .values(claimed_by=None, claim_expires_at=None)
                )
                conn.execute(
                    update(poll_runs)
                    .where(poll_runs.c.id == self.summary.run_id)
                    .values(
                        finished_at=self.tracker.clock(),
                        outcome=self.summary.outcome,
                        requests=self.summary.requests,
                        jobs_seen=self.summary.files_done + self.summary.files_failed,
                        jobs_changed=self.summary.files_done,
                        jobs_failed=self.summary.files_failed,
                        error=error,
                    )
                )
        return self.summary

    # --- selection and claims -------------------------------------------------------------

    def _where(self, now: Any) -> list[Any]:
        states = ["pending", "failed"] if self.options.retry_failed else ["pending"]
        where: list[ColumnElement[bool]] = [downloads.c.state.in_(states)]
        if not self.options.retry_failed:
            where.append(downloads.c.attempts < self.options.max_attempts)
        if self.options.kind:
            where.append(downloads.c.kind == self.options.kind)
        if self.options.job_id:
            where.append(downloads.c.job_id == self.options.job_id)
        where.append(or_(downloads.c.claimed_by.is_(None), downloads.c.claim_expires_at < now))
        return where

    def _count(self) -> int:
        with self.tracker.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(downloads)
                    .where(*self._where(self.tracker.clock()))
                ).scalar_one()
            )

    def _release_dead_claims(self) -> None:
        """Free claims whose downloader died on this host (SIGKILL), so its files go on now."""
        with self.tracker.read() as conn:
            holders = [
                h
                for (h,) in conn.execute(
                    select(downloads.c.claimed_by)
                    .where(downloads.c.claimed_by.is_not(None))
                    .distinct()
                )
            ]
        dead = [h for h in holders if leases.holder_is_dead(h)]
        if dead:
            with self.tracker.write() as conn:
                conn.execute(
                    update(downloads)
                    .where(downloads.c.claimed_by.in_(dead))
                    .values(claimed_by=None, claim_expires_at=None)
                )

    def _claim(self, limit: int) -> list[FetchTask]:
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            rows = conn.execute(
                select(
                    downloads.c.job_id,
                    downloads.c.kind,
                    downloads.c.source_url,
                    downloads.c.claimed_by,
                )
                .where(*self._where(now))
                .order_by(
                    downloads.c.url_expires_at.asc().nulls_last(),
                    downloads.c.created_at,
                    downloads.c.job_id,
                    downloads.c.kind,
                )
                .limit(limit)
            ).all()
            # An expired claim of a downloader that is still alive on this host is respected:
            # expiry is for holders that died or that we cannot see (other hosts).
            rows = [
                r for r in rows if r.claimed_by is None or not leases.holder_is_alive(r.claimed_by)
            ]
            if rows:
                conn.execute(
                    update(downloads)
                    .where(
                        tuple_(downloads.c.job_id, downloads.c.kind).in_(
                            [(r.job_id, r.kind) for r in rows]
                        )
                    )
                    .values(claimed_by=self.holder, claim_expires_at=now + self.options.claim_ttl)
                )
        return [self._task(r.job_id, r.kind, r.source_url) for r in rows]

    def _task(self, job_id: str, kind: str, source_url: str | None) -> FetchTask:
        url = source_url or self.client.job_file_url(job_id, kind)
        return FetchTask(
            job_id, kind, url, source_url is not None, file_path(self.options.dest, job_id, kind)
        )

    # --- the loop -------------------------------------------------------------------------

    def _over_time(self) -> bool:
        limit = self.options.max_duration
        return limit is not None and time.monotonic() - self._started > limit

    def _loop(self) -> None:
        width = self.options.concurrency
        refreshed: set[tuple[str, str]] = set()
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="download") as pool:
            running: dict[Future[FetchOutcome], FetchTask] = {}
            exhausted = False
            claims = 0
            renewed = time.monotonic()
            # Bounded: a row is claimed at most once per run (a failed one stays claimed by us
            # until the run ends), so claims stop; each wait ends when a fetch does, and every
            # fetch is bounded by the client's timeouts and retry budget.
            while True:
                if (
                    not exhausted
                    and len(running) < width
                    and not self.stop.is_set()
                    and not self._over_time()
                    and claims <= self._total + 1
                ):
                    tasks = self._claim(width * 2 - len(running))
                    claims += 1
                    exhausted = not tasks
                    for task in tasks:
                        running[pool.submit(fetch, self.client, task)] = task
                if not running:
                    return
                if time.monotonic() - renewed > _RENEW_EVERY_S:
                    self._renew_claims()
                    renewed = time.monotonic()
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                finished: list[FetchOutcome] = []
                for future in done:
                    task = running.pop(future)
                    outcome = future.result()
                    key = (task.job_id, task.kind)
                    if outcome.expired and key not in refreshed:
                        refreshed.add(key)
                        retry = self._refresh(task)
                        if retry is not None:
                            running[pool.submit(fetch, self.client, retry)] = retry
                            continue
                    finished.append(outcome)
                self._record(finished)

    def _renew_claims(self) -> None:
        """Extend our claims while long files are still coming in."""
        now = self.tracker.clock()
        with self.tracker.write() as conn:
            conn.execute(
                update(downloads)
                .where(downloads.c.claimed_by == self.holder)
                .values(claim_expires_at=now + self.options.claim_ttl)
            )

    def _refresh(self, task: FetchTask) -> FetchTask | None:
        """Ask the API for the job again, for freshly signed URLs; None when it gave none.

        One request per job and run: a legacy job's three files expire together, and the first
        refresh stores fresh URLs for all of them.
        """
        if task.job_id not in self._refreshed_jobs:
            self._refreshed_jobs.add(task.job_id)
            try:
                payload = self.client.get_job(task.job_id)
                result = parse_response(payload, task.job_id)
            except AuthError:
                raise
            except JobTrackerError as exc:
                log.warning("job %s: could not refresh expired URLs: %s", task.job_id, exc)
                return None
            with self.tracker.write() as conn:
                write_results(conn, [(result, payload)], now=self.tracker.clock(), polled=True)
            self.summary.refreshed += 1
        with self.tracker.read() as conn:
            url = conn.execute(
                select(downloads.c.source_url).where(
                    downloads.c.job_id == task.job_id, downloads.c.kind == task.kind
                )
            ).scalar()
        if not url or url == task.url:
            return None
        return FetchTask(task.job_id, task.kind, url, True, task.path)

    def _record(self, outcomes: list[FetchOutcome]) -> None:
        """Record finished fetches, all in one transaction with one statement per kind."""
        if not outcomes:
            return
        now = self.tracker.clock()
        done = [o for o in outcomes if o.error is None]
        failed = [o for o in outcomes if o.error is not None]
        where = and_(
            downloads.c.job_id == bindparam("b_job_id"), downloads.c.kind == bindparam("b_kind")
        )
        if done:
            # New job directories' entries, once for the batch, before the files count as done.
            fsync_dir(self.options.dest)
        with self.tracker.write() as conn:
            if done:
                conn.execute(
                    update(downloads)
                    .where(where)
                    .values(
                        state="done",
                        local_path=bindparam("b_path"),
                        size_bytes=bindparam("b_size"),
                        sha256=bindparam("b_sha256"),
                        last_error=None,
                        completed_at=now,
                        updated_at=now,
                        attempts=downloads.c.attempts + 1,
                        claimed_by=None,
                        claim_expires_at=None,
                    ),
                    [
                        {
                            "b_job_id": o.task.job_id,
                            "b_kind": o.task.kind,
                            "b_path": str(o.task.path),
                            "b_size": o.size,
                            "b_sha256": o.sha256,
                        }
                        for o in done
                    ],
                )
            if failed:
                # The claim stays ours until the run ends: one attempt per file per run, so a
                # brief outage cannot use up every attempt within seconds.
                attempts = downloads.c.attempts + 1
                conn.execute(
                    update(downloads)
                    .where(where)
                    .values(
                        state=case(
                            (attempts >= self.options.max_attempts, "failed"), else_="pending"
                        ),
                        attempts=attempts,
                        last_error=bindparam("b_error"),
                        updated_at=now,
                    ),
                    [
                        {
                            "b_job_id": o.task.job_id,
                            "b_kind": o.task.kind,
                            "b_error": (o.error or "")[:1000],
                        }
                        for o in failed
                    ],
                )
                gave_up = conn.execute(
                    select(func.count())
                    .select_from(downloads)
                    .where(
                        tuple_(downloads.c.job_id, downloads.c.kind).in_(
                            [(o.task.job_id, o.task.kind) for o in failed]
                        ),
                        downloads.c.state == "failed",
                    )
                ).scalar_one()
                self.summary.files_gave_up += int(gave_up)
        self.summary.files_done += len(done)
        self.summary.bytes += sum(o.size for o in done)
        self.summary.files_failed += len(failed)
        for o in failed:
            if len(self.summary.failures) < 100:
                self.summary.failures.append(f"{o.task.job_id} {o.task.kind}: {o.error}")
        if self.on_progress is not None:
            self.on_progress(
                self.summary.files_done + self.summary.files_failed, self._total, self.summary.bytes
            )


#: Done downloads read per page by verify (keyset paging keeps memory flat at any size).
_VERIFY_PAGE = 1000


def verify(tracker: Tracker) -> VerifySummary:
    """Re-hash every downloaded file; missing or changed ones go back to pending with a note.

    Rows are read a page at a time and files hashed outside any transaction; each page's
    findings are written before the next page is read.
    """
    checked = ok = missing = changed = 0
    after: tuple[str, str] = ("", "")
    while True:
        with tracker.read() as conn:
            rows = conn.execute(
                select(
                    downloads.c.job_id, downloads.c.kind, downloads.c.local_path, downloads.c.sha256
                )
                .where(
                    downloads.c.state == "done",
                    tuple_(downloads.c.job_id, downloads.c.kind) > after,
                )
                .order_by(downloads.c.job_id, downloads.c.kind)
                .limit(_VERIFY_PAGE)
            ).all()
        if not rows:
            break
        after = (rows[-1].job_id, rows[-1].kind)
        requeue: list[tuple[str, str, str]] = []
        for row in rows:
            checked += 1
            path = Path(row.local_path) if row.local_path else None
            if path is None or not path.is_file():
                missing += 1
                requeue.append((row.job_id, row.kind, "verify: file missing on disk; queued again"))
                continue
            _, digest = hash_file(path)
            if digest != row.sha256:
                changed += 1
                requeue.append(
                    (row.job_id, row.kind, "verify: file changed on disk (sha256); queued again")
                )
            else:
                ok += 1
        if requeue:
            now = tracker.clock()
            with tracker.write() as conn:
                conn.execute(
                    update(downloads)
                    .where(
                        downloads.c.job_id == bindparam("b_job_id"),
                        downloads.c.kind == bindparam("b_kind"),
                        downloads.c.state == "done",
                    )
                    .values(
                        state="pending",
                        attempts=0,
                        last_error=bindparam("b_note"),
                        sha256=None,
                        size_bytes=None,
                        completed_at=None,
                        updated_at=now,
                    ),
                    [{"b_job_id": j, "b_kind": k, "b_note": n} for j, k, n in requeue],
                )
    return VerifySummary(checked, ok, missing, changed)
