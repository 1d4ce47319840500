"""Tables and indexes (SQLAlchemy 2 typed declarative), designed for people who write SQL.

Names are plain and guessable: ``jobs``, ``job_configs``, ``job_inputs``, ``job_status_history``,
``downloads``. Times are timezone-aware UTC (``timestamptz`` on PostgreSQL; ISO text on SQLite,
which has no time type). The reporting views are created by the migrations (their SQL is frozen
there, as migrations must not change after release); ``VIEW_NAMES`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Reporting views created by migrations (see README "SQL views").
VIEW_NAMES = ("job_run_times", "model_run_times", "outstanding_downloads", "daily_summary")

STATUS_VALUES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED")
DOWNLOAD_STATES = ("pending", "done", "failed")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite stores naive ISO text, so values are normalised to UTC on the way in and get their
    ``tzinfo`` back on the way out; PostgreSQL stores ``timestamptz`` and answers in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # SQLite: one C-level conversion each way instead of SQLAlchemy's generic formatter and
    # regex parser wrapped around ours (datetimes were the largest cost of a bulk import). The
    # text is exactly SQLAlchemy's SQLite format, "2024-04-08 14:39:18.717000".

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # A batch writes the same "now" into many columns: remember the last conversion. One
        # tuple is swapped in whole, so threads sharing this processor never see a torn pair.
        last: list[tuple[datetime | None, str | None]] = [(None, None)]

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            seen, text = last[0]
            if value is seen:
                return text
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column; attach a timezone")
            if value.tzinfo is not UTC:
                value = value.astimezone(UTC)
            # "YYYY-MM-DD HH:MM:SS.ffffff+00:00" without its offset.
            text = value.isoformat(" ", "microseconds")[:26]
            last[0] = (value, text)
            return text

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | datetime | None) -> datetime | None:
            if value is None:
                return None
            if isinstance(value, datetime):
                return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return process


# none_as_null: a Python None is SQL NULL (not the JSON text 'null'), so `detail IS NULL` works.
JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _check_in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention every constraint follows."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType}


class Job(Base):
    """One row per batch job: the provider's view beside the tracker's own clock."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    job_type: Mapped[str | None] = mapped_column(Text)
    response_shape: Mapped[str] = mapped_column(String(16))
    # The provider's clock.
    created_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    run_time_s: Mapped[float | None] = mapped_column(Float)
    queue_time_s: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    num_predictions: Mapped[int | None] = mapped_column(Integer)
    num_errors: Mapped[int | None] = mapped_column(Integer)
    callback_url: Mapped[str | None] = mapped_column(Text)
    notify: Mapped[bool | None] = mapped_column(Boolean)
    # The last payload as received, so parsing can be re-run after a parser fix.
    raw_payload: Mapped[dict[str, Any]]
    payload_hash: Mapped[str] = mapped_column(String(64))
    # Hash of the payload's request part: unchanged requests skip rewriting configs/inputs.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    parser_version: Mapped[int] = mapped_column(Integer)
    # The tracker's own clock.
    first_seen_at: Mapped[datetime]
    last_changed_at: Mapped[datetime]
    terminal_seen_at: Mapped[datetime | None]
    last_polled_at: Mapped[datetime | None]
    # The poller's schedule: when to GET this job again, failures in a row, the last error,
    # and when the API answered 404 for it (then it is no longer polled).
    next_poll_at: Mapped[datetime | None]
    poll_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_poll_error: Mapped[str | None] = mapped_column(Text)
    not_found_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_check_in("status", STATUS_VALUES), name="status"),
        CheckConstraint(_check_in("response_shape", ("current", "legacy")), name="response_shape"),
        Index(None, "status", "created_at"),
        Index(None, "created_at", "run_time_s"),
        Index(None, "status", "run_time_s"),
    )


class JobConfig(Base):
    """One row per (job, model) with the model's raw config.

    ``run_time_s`` repeats the job's run time so that per-model statistics are answered from
    one index instead of a join over every job.
    """

    __tablename__ = "job_configs"

    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    config: Mapped[dict[str, Any]]
    run_time_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index(None, "model", "run_time_s"),)


class JobInput(Base):
    """The job's inputs in request order: ``kind`` is ``url``, ``file`` or ``text``."""

    __tablename__ = "job_inputs"

    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None]

    __table_args__ = (CheckConstraint(_check_in("kind", ("url", "file", "text")), name="kind"),)


class JobStatusHistory(Base):
    """Every status transition the tracker observed, in order."""

    __tablename__ = "job_status_history"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(Text, ForeignKey("jobs.job_id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    # When the provider says the status began (created/started/ended), if it says.
    provider_at: Mapped[datetime | None]
    observed_at: Mapped[datetime]

    __table_args__ = (Index(None, "job_id", "id"),)


class Download(Base):
    """One result file of a completed job: predictions, artifacts or errors."""

    __tablename__ = "downloads"

    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    # Legacy jobs: the signed storage URL; NULL means "the API's own endpoint for this kind".
    source_url: Mapped[str | None] = mapped_column(Text)
    url_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    local_path: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    # The downloader fetching this file now (``host:pid:token``) and until when: two
    # downloaders never fetch the same file.
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claim_expires_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_check_in("state", DOWNLOAD_STATES), name="state"),
        CheckConstraint(_check_in("kind", ("predictions", "artifacts", "errors")), name="kind"),
        # Outstanding downloads are few next to done ones: a partial index keeps the
        # "what is left to fetch" page an index range scan.
        Index(
            "ix_downloads_outstanding",
            "created_at",
            "job_id",
            "kind",
            sqlite_where=text("state <> 'done'"),
            postgresql_where=text("state <> 'done'"),
        ),
        Index(
            "ix_downloads_expiring",
            "url_expires_at",
            sqlite_where=text("state <> 'done' AND url_expires_at IS NOT NULL"),
            postgresql_where=text("state <> 'done' AND url_expires_at IS NOT NULL"),
        ),
    )


class TrackedJob(Base):
    """A job id registered with ``jobtracker track``, to fetch even if no list shows it."""

    __tablename__ = "tracked_jobs"

    job_id: Mapped[str] = mapped_column(Text, primary_key=True)
    added_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)
    # Set when the API answered 404: the id is kept, and no longer asked for.
    not_found_at: Mapped[datetime | None]


class PollRun(Base):
    """One ``jobtracker poll`` (or ``download``) run: is cron healthy, when did it last succeed."""

    __tablename__ = "poll_runs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    command: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    requests: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    jobs_seen: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    jobs_changed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    jobs_failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "command", "started_at"),)


class Lease(Base):
    """A named, expiring lock held by one process (overlapping cron runs, downloaders)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text)
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class TrackerState(Base):
    """Small named values the poller keeps between runs (e.g. the discovery cursor)."""

    __tablename__ = "tracker_state"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


jobs = cast(Table, Job.__table__)
job_configs = cast(Table, JobConfig.__table__)
job_inputs = cast(Table, JobInput.__table__)
job_status_history = cast(Table, JobStatusHistory.__table__)
downloads = cast(Table, Download.__table__)
tracked_jobs = cast(Table, TrackedJob.__table__)
poll_runs = cast(Table, PollRun.__table__)
leases = cast(Table, Lease.__table__)
tracker_state = cast(Table, TrackerState.__table__)
metadata = Base.metadata
