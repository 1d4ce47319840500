"""``Tracker``: the Python API. Owns the engine, opens every transaction, orchestrates.

The CLI calls one ``Tracker`` method per command; Python code can do the same::

    from jobtracker import Tracker

    with Tracker("sqlite:///jobs.db") as tracker:
        tracker.upgrade()
        tracker.ingest([payload], job_id="legacy-1")
        print(tracker.run_time_stats(by="model"))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, text

from jobtracker import db, queries
from jobtracker.client import DEFAULT_MAX_RPS, BatchClient
from jobtracker.downloads import (
    Downloader,
    DownloadOptions,
    DownloadSummary,
    ProgressFn,
    VerifySummary,
    verify,
)
from jobtracker.errors import AuthError, ParseError, UnknownJob
from jobtracker.parse import parse_response
from jobtracker.poll_types import PollOptions, PollSummary
from jobtracker.poller import Poller
from jobtracker.results import JobResult
from jobtracker.schema import poll_runs, tracked_jobs
from jobtracker.settings import data_dir, resolve_api_key, resolve_api_url, resolve_db_url
from jobtracker.sources import BadRecord, Record, read_records
from jobtracker.store import WriteStats, set_state, write_results
from jobtracker.urls import redact_db_url

#: Jobs written per transaction by ingest: large enough to amortise commits, small enough that
#: an interrupted import keeps nearly everything and readers are never blocked for long.
INGEST_BATCH = 2000
#: Parse errors kept on ``IngestStats.errors`` (all are passed to ``on_error``).
MAX_KEPT_ERRORS = 1000
#: tracker_state key remembering the download directory of this database.
DOWNLOAD_DIR_KEY = "download.dest"
# Arbitrary constant naming jobtracker's writer lock on PostgreSQL.
_PG_WRITE_LOCK = 7428131


@dataclass(slots=True)
class IngestStats(WriteStats):
    """What an ingest did: write counts plus records that could not be parsed."""

    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering."""
        return {
            "received": self.received + self.failed,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "stale": self.stale,
            "failed": self.failed,
        }


class Tracker:
    """Keeps batch jobs on record in one database (SQLite file or PostgreSQL).

    ``db_url`` falls back to ``$JOBTRACKER_DB`` and then to an SQLite file in the user's data
    directory. ``clock`` returns the tracker's "now" (timezone-aware UTC); tests pass their own.
    The database must be at this version's schema revision (``upgrade()`` gets it there);
    every other method checks once and raises :class:`DatabaseNotReady` otherwise.
    """

    def __init__(self, db_url: str | None = None, *, clock: Callable[[], datetime] | None = None):
        self.url = resolve_db_url(db_url)
        self.engine = db.make_engine(self.url)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._ready = False

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @property
    def display_url(self) -> str:
        """The database URL with any password hidden."""
        return redact_db_url(self.url)

    # --- schema ---------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the database to ``revision`` (creating the SQLite file if needed)."""
        db.upgrade(self.engine, self.url, revision)
        self._ready = False

    def downgrade(self, revision: str) -> None:
        """Migrate the database down to ``revision``."""
        db.downgrade(self.engine, revision)
        self._ready = False

    def current_revision(self) -> str | None:
        """The database's schema revision, ``None`` when never migrated."""
        path = db.sqlite_path(self.url)
        if path is not None and not path.exists():
            return None
        with self.engine.connect() as conn:
            return db.current_revision(conn)

    def head_revision(self) -> str:
        """The schema revision this version of jobtracker expects."""
        return db.head_revision()

    # --- transactions ---------------------------------------------------------------------

    def _check(self) -> None:
        if not self._ready:
            db.check_ready(self.engine, self.url)
            self._ready = True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading (one snapshot on SQLite, read committed on PostgreSQL)."""
        self._check()
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed on success and rolled back on any error.

        Writers take the database's write lock up front (``BEGIN IMMEDIATE`` on SQLite, an
        advisory transaction lock on PostgreSQL), so concurrent writers queue instead of
        interleaving their read-then-write batches.
        """
        self._check()
        with self.engine.connect().execution_options(**db.WRITE) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})"))
            yield conn

    # --- ingest ---------------------------------------------------------------------------

    def ingest(
        self,
        payloads: Iterable[Any],
        *,
        job_id: str | None = None,
        on_error: Callable[[ParseError], None] | None = None,
        batch_size: int = INGEST_BATCH,
        polled: bool = False,
    ) -> IngestStats:
        """Parse and store job payloads (either shape), in batches, one transaction each.

        ``payloads`` holds decoded JSON objects, or :class:`~jobtracker.sources.Record` /
        ``BadRecord`` items that say where each came from. ``job_id`` names payloads that carry
        no id (the legacy shape). A record that fails to parse is passed to ``on_error``, counted
        and skipped; the others still land. Idempotent: the same data twice adds nothing.
        An ``AuthError`` payload (the API's ``Invalid ApiKey`` fault) stops the ingest.
        """
        stats = IngestStats()
        batch: list[tuple[JobResult, Any]] = []
        for number, item in enumerate(payloads, 1):
            where, payload = f"record {number}", item
            if isinstance(item, Record):
                where, payload = item.where, item.payload
            try:
                if isinstance(item, BadRecord):
                    raise ParseError(item.error, where=item.where)
                result = parse_response(payload, job_id)
                if result.job_id is None:
                    raise ParseError(
                        "payload carries no job_id (legacy responses never do); "
                        "pass the job's id (--job-id)"
                    )
            except AuthError:
                raise
            except ParseError as exc:
                exc.where = exc.where or where
                stats.failed += 1
                if len(stats.errors) < MAX_KEPT_ERRORS:
                    stats.errors.append(str(exc))
                if on_error is not None:
                    on_error(exc)
                continue
            batch.append((result, payload))
            if len(batch) >= batch_size:
                self._write_batch(batch, stats, polled)
                batch = []
        if batch:
            self._write_batch(batch, stats, polled)
        return stats

    def _write_batch(
        self, batch: list[tuple[JobResult, Any]], stats: IngestStats, polled: bool
    ) -> None:
        with self.write() as conn:
            stats.add(write_results(conn, batch, now=self.clock(), polled=polled))

    def import_files(
        self,
        paths: Sequence[str | Path],
        *,
        job_id: str | None = None,
        on_error: Callable[[ParseError], None] | None = None,
        batch_size: int = INGEST_BATCH,
    ) -> IngestStats:
        """Ingest every record of the given files (``-`` for stdin), streaming them."""

        def records() -> Iterator[Record | BadRecord]:
            for path in paths:
                yield from read_records(path)

        return self.ingest(records(), job_id=job_id, on_error=on_error, batch_size=batch_size)

    # --- reads ----------------------------------------------------------------------------

    def job(self, job_id: str) -> queries.JobDetail:
        """Everything stored about one job; raises :class:`UnknownJob` if absent."""
        with self.read() as conn:
            detail = queries.get_job(conn, job_id)
        if detail is None:
            raise UnknownJob(job_id)
        return detail

    def jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 100,
    ) -> list[queries.JobRow]:
        """Jobs newest first, filtered by status(es), model and creation time."""
        statuses = [status] if isinstance(status, str) else status
        with self.read() as conn:
            return queries.list_jobs(
                conn, status=statuses, model=model, since=since, until=until, limit=limit
            )

    def run_time(self, job_id: str) -> float | None:
        """Seconds the job ran, ``None`` while it runs; raises :class:`UnknownJob` if absent."""
        with self.read() as conn:
            found, seconds = queries.run_time(conn, job_id)
        if not found:
            raise UnknownJob(job_id)
        return seconds

    def run_time_stats(
        self, by: queries.GroupBy = "model", since: datetime | None = None
    ) -> list[queries.StatsRow]:
        """Count, mean, p50, p95 and max run time per model, status or day."""
        with self.read() as conn:
            return queries.run_time_stats(conn, by=by, since=since)

    def outstanding_downloads(
        self,
        kind: str | None = None,
        *,
        expiring_within: timedelta | None = None,
        include_failed: bool = True,
        limit: int | None = None,
    ) -> list[queries.DownloadRow]:
        """Result files not fetched yet (pending or failed), oldest first.

        With ``expiring_within``: only signed URLs that expire within that time, soonest first.
        """
        before = None if expiring_within is None else self.clock() + expiring_within
        with self.read() as conn:
            return list(
                queries.outstanding_downloads(
                    conn,
                    kind=kind,
                    expiring_before=before,
                    include_failed=include_failed,
                    limit=limit,
                )
            )

    # --- polling --------------------------------------------------------------------------

    def client(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        max_rps: float = DEFAULT_MAX_RPS,
        pool_size: int = 16,
    ) -> BatchClient:
        """A batch-API client for this tracker's polls and downloads.

        URL: argument, else ``$JOBTRACKER_API_URL``, else the Hume API; key: argument, else
        ``$HUME_API_KEY``.
        """
        return BatchClient(
            resolve_api_url(api_url), resolve_api_key(api_key), max_rps=max_rps, pool_size=pool_size
        )

    def track(self, job_ids: Iterable[str], note: str | None = None) -> int:
        """Register job ids for the poller to follow; returns how many were new."""
        ids = list(dict.fromkeys(i.strip() for i in job_ids if i and i.strip()))
        if not ids:
            return 0
        now = self.clock()
        added = 0
        with self.write() as conn:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                known = set(
                    conn.execute(
                        select(tracked_jobs.c.job_id).where(tracked_jobs.c.job_id.in_(chunk))
                    ).scalars()
                )
                rows = [
                    {"job_id": i, "added_at": now, "note": note} for i in chunk if i not in known
                ]
                if rows:
                    conn.execute(tracked_jobs.insert(), rows)
                added += len(rows)
        return added

    def poll(
        self,
        client: BatchClient,
        options: PollOptions | None = None,
        stop: threading.Event | None = None,
    ) -> PollSummary:
        """Run one poll cycle (see :mod:`jobtracker.poller`).

        Raises :class:`LockHeld` while another poll runs, :class:`AuthError` when the API
        rejects the key.
        """
        self._check()
        return Poller(self, client, options, stop).run()

    def runs(self, limit: int = 20, command: str | None = None) -> list[dict[str, Any]]:
        """The most recent poll/download runs, newest first."""
        query = select(poll_runs).order_by(poll_runs.c.id.desc()).limit(limit)
        if command:
            query = query.where(poll_runs.c.command == command)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # --- downloads ------------------------------------------------------------------------

    def download_dir(self, dest: str | Path | None = None) -> Path:
        """Where result files go for this database.

        ``dest`` when given (and then remembered for this database), else the remembered one,
        else ``results/`` beside the SQLite file (in the data directory for PostgreSQL).
        """
        if dest is not None:
            chosen = Path(dest).expanduser().resolve()
            with self.write() as conn:
                set_state(conn, DOWNLOAD_DIR_KEY, str(chosen), self.clock())
            return chosen
        with self.read() as conn:
            remembered = queries.get_state(conn, DOWNLOAD_DIR_KEY)
        if remembered:
            return Path(remembered)
        path = db.sqlite_path(self.url)
        return (path.resolve().parent if path is not None else data_dir()) / "results"

    def download(
        self,
        client: BatchClient,
        *,
        dest: str | Path | None = None,
        kind: str | None = None,
        job_id: str | None = None,
        concurrency: int = 4,
        retry_failed: bool = False,
        max_duration: float | None = None,
        stop: threading.Event | None = None,
        on_progress: ProgressFn | None = None,
    ) -> DownloadSummary:
        """Fetch every outstanding result file (see :mod:`jobtracker.downloads`)."""
        options = DownloadOptions(
            dest=self.download_dir(dest),
            kind=kind,
            job_id=job_id,
            concurrency=concurrency,
            retry_failed=retry_failed,
            max_duration=max_duration,
        )
        options.dest.mkdir(parents=True, exist_ok=True)
        return Downloader(self, client, options, stop, on_progress).run()

    def verify_downloads(self) -> VerifySummary:
        """Re-hash downloaded files; missing or changed ones go back to pending."""
        return verify(self)
