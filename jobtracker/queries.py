"""Read-only queries: jobs, run times and their statistics, outstanding downloads.

Each function takes an open connection and never writes. Percentiles use the nearest-rank
definition (the smallest value with at least p% of the values at or below it), computed with
``ORDER BY ... LIMIT 1 OFFSET k`` over an index, which gives the same answer on SQLite (which has
no percentile function) and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Select, and_, exists, func, select

from jobtracker.results import JobStatus
from jobtracker.schema import (
    downloads,
    job_configs,
    job_inputs,
    job_status_history,
    jobs,
    tracker_state,
)

GroupBy = Literal["model", "status", "day"]


@dataclass(slots=True)
class JobRow:
    """One job as ``jobs list`` shows it."""

    job_id: str
    status: str
    models: list[str]
    urls: list[str]
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    run_time_s: float | None
    queue_time_s: float | None
    error_message: str | None
    num_predictions: int | None
    num_errors: int | None
    job_type: str | None
    response_shape: str
    first_seen_at: datetime
    last_changed_at: datetime
    terminal_seen_at: datetime | None
    last_polled_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering."""
        return asdict(self)


@dataclass(slots=True)
class JobDetail(JobRow):
    """One job with everything stored about it (``jobs show``)."""

    configs: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    callback_url: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class StatsRow:
    """Run-time statistics of one group, in seconds."""

    group: str
    jobs: int
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    max_s: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering."""
        return asdict(self)


@dataclass(slots=True)
class DownloadRow:
    """One result file not fetched yet (pending, or failed after its attempts)."""

    job_id: str
    kind: str
    state: str
    attempts: int
    last_error: str | None
    source_url: str | None
    url_expires_at: datetime | None
    created_at: datetime
    local_path: str | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for rendering."""
        return asdict(self)


_JOB_COLUMNS = (
    jobs.c.job_id,
    jobs.c.status,
    jobs.c.created_at,
    jobs.c.started_at,
    jobs.c.ended_at,
    jobs.c.run_time_s,
    jobs.c.queue_time_s,
    jobs.c.error_message,
    jobs.c.num_predictions,
    jobs.c.num_errors,
    jobs.c.job_type,
    jobs.c.response_shape,
    jobs.c.first_seen_at,
    jobs.c.last_changed_at,
    jobs.c.terminal_seen_at,
    jobs.c.last_polled_at,
)


def _job_filters(
    status: Sequence[str] | None,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(jobs.c.status.in_([JobStatus(s.upper()).value for s in status]))
    if model:
        # EXISTS probes the (job_id, model) primary key per candidate row, so a LIMIT stops
        # early instead of materialising every job of that model first.
        where.append(
            exists().where(
                and_(job_configs.c.job_id == jobs.c.job_id, job_configs.c.model == model)
            )
        )
    if since:
        where.append(jobs.c.created_at >= since)
    if until:
        where.append(jobs.c.created_at < until)
    return where


def list_jobs(
    conn: Connection,
    *,
    status: Sequence[str] | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
) -> list[JobRow]:
    """Jobs newest first (by the provider's creation time), filtered."""
    query = (
        select(*_JOB_COLUMNS)
        .where(*_job_filters(status, model, since, until))
        .order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    ids = [r.job_id for r in rows]
    models = _models_of(conn, ids)
    urls = _urls_of(conn, ids)
    return [
        JobRow(models=models.get(r.job_id, []), urls=urls.get(r.job_id, []), **r._asdict())
        for r in rows
    ]


def _models_of(conn: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if ids:
        query = (
            select(job_configs.c.job_id, job_configs.c.model)
            .where(job_configs.c.job_id.in_(ids))
            .order_by(job_configs.c.job_id, job_configs.c.model)
        )
        for job_id, model in conn.execute(query):
            out.setdefault(job_id, []).append(model)
    return out


def _urls_of(conn: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if ids:
        query = (
            select(job_inputs.c.job_id, job_inputs.c.value)
            .where(job_inputs.c.job_id.in_(ids), job_inputs.c.kind == "url")
            .order_by(job_inputs.c.job_id, job_inputs.c.position)
        )
        for job_id, value in conn.execute(query):
            out.setdefault(job_id, []).append(value)
    return out


def get_job(conn: Connection, job_id: str) -> JobDetail | None:
    """Everything stored about one job, or ``None`` if it is not in the database."""
    row = conn.execute(
        select(*_JOB_COLUMNS, jobs.c.callback_url).where(jobs.c.job_id == job_id)
    ).first()
    if row is None:
        return None
    data = row._asdict()
    detail = JobDetail(models=[], urls=[], **data)
    for model, config in conn.execute(
        select(job_configs.c.model, job_configs.c.config)
        .where(job_configs.c.job_id == job_id)
        .order_by(job_configs.c.model)
    ):
        detail.models.append(model)
        detail.configs[model] = config
    for kind, value, detail_json in conn.execute(
        select(job_inputs.c.kind, job_inputs.c.value, job_inputs.c.detail)
        .where(job_inputs.c.job_id == job_id)
        .order_by(job_inputs.c.kind, job_inputs.c.position)
    ):
        if kind == "url":
            detail.urls.append(value)
        elif kind == "file":
            detail.files.append(detail_json or {"filename": value})
        else:
            detail.text.append(value)
    detail.history = [
        r._asdict()
        for r in conn.execute(
            select(
                job_status_history.c.from_status,
                job_status_history.c.to_status,
                job_status_history.c.provider_at,
                job_status_history.c.observed_at,
            )
            .where(job_status_history.c.job_id == job_id)
            .order_by(job_status_history.c.id)
        )
    ]
    detail.downloads = [
        r._asdict()
        for r in conn.execute(
            select(
                downloads.c.kind,
                downloads.c.state,
                downloads.c.attempts,
                downloads.c.last_error,
                downloads.c.source_url,
                downloads.c.url_expires_at,
                downloads.c.local_path,
                downloads.c.size_bytes,
                downloads.c.sha256,
                downloads.c.completed_at,
            )
            .where(downloads.c.job_id == job_id)
            .order_by(downloads.c.kind)
        )
    ]
    return detail


def run_time(conn: Connection, job_id: str) -> tuple[bool, float | None]:
    """``(found, run time in seconds)``; the run time is ``None`` until the job has ended."""
    row = conn.execute(select(jobs.c.run_time_s).where(jobs.c.job_id == job_id)).first()
    return (False, None) if row is None else (True, row.run_time_s)


def run_time_stats(
    conn: Connection, *, by: GroupBy = "model", since: datetime | None = None
) -> list[StatsRow]:
    """Count, mean, p50, p95 and max run time per model, status or UTC day of creation.

    Only jobs that have ended (and so have a run time) are counted.
    """
    value: Any = jobs.c.run_time_s
    source: Any = jobs
    base: list[ColumnElement[bool]] = [value.is_not(None)]
    if since is not None:
        base.append(jobs.c.created_at >= since)

    key: ColumnElement[Any]

    def group_where(group: Any) -> list[ColumnElement[bool]]:
        return [key == group]

    def label(group: Any) -> str:
        return str(group)

    if by == "model":
        value, key = job_configs.c.run_time_s, job_configs.c.model
        base[0] = value.is_not(None)
        source = job_configs
        if since is not None:
            source = job_configs.join(jobs, jobs.c.job_id == job_configs.c.job_id)
    elif by == "status":
        key = jobs.c.status
    elif by == "day":
        base.append(jobs.c.created_at.is_not(None))
        if conn.dialect.name == "postgresql":
            key = func.date(func.timezone("UTC", jobs.c.created_at))
        else:
            key = func.date(jobs.c.created_at)

        def group_where(group: Any) -> list[ColumnElement[bool]]:
            # A range on created_at uses its index; the day expression would not.
            start = datetime.fromisoformat(str(group)).replace(tzinfo=UTC)
            return [jobs.c.created_at >= start, jobs.c.created_at < start + timedelta(days=1)]

        def label(group: Any) -> str:
            return str(group)[:10]
    else:
        raise ValueError(f"unknown grouping {by!r}; use model, status or day")

    summary = (
        select(key, func.count(), func.avg(value), func.max(value))
        .select_from(source)
        .where(*base)
        .group_by(key)
        .order_by(key)
    )
    out = []
    for group, count, mean, maximum in conn.execute(summary):
        query = select(value).select_from(source).where(*base, *group_where(group))
        out.append(
            StatsRow(
                label(group),
                count,
                _float(mean),
                _nearest_rank(conn, query, value, count, 0.50),
                _nearest_rank(conn, query, value, count, 0.95),
                _float(maximum),
            )
        )
    return out


def _nearest_rank(
    conn: Connection, query: Select[Any], value: Any, count: int, p: float
) -> float | None:
    if count == 0:
        return None
    offset = max(math.ceil(p * count) - 1, 0)
    return _float(conn.execute(query.order_by(value).limit(1).offset(offset)).scalar())


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def outstanding_downloads(
    conn: Connection,
    *,
    kind: str | None = None,
    expiring_before: datetime | None = None,
    include_failed: bool = True,
    limit: int | None = None,
) -> Iterator[DownloadRow]:
    """Result files not fetched yet, oldest first; streams rows (no list of a million)."""
    where: list[ColumnElement[bool]] = [downloads.c.state != "done"]
    if not include_failed:
        where.append(downloads.c.state == "pending")
    if kind:
        where.append(downloads.c.kind == kind)
    order: list[Any] = [downloads.c.created_at, downloads.c.job_id, downloads.c.kind]
    if expiring_before is not None:
        where += [
            downloads.c.url_expires_at.is_not(None),
            downloads.c.url_expires_at < expiring_before,
        ]
        order = [downloads.c.url_expires_at, *order]
    query = (
        select(
            downloads.c.job_id,
            downloads.c.kind,
            downloads.c.state,
            downloads.c.attempts,
            downloads.c.last_error,
            downloads.c.source_url,
            downloads.c.url_expires_at,
            downloads.c.created_at,
            downloads.c.local_path,
        )
        .where(*where)
        .order_by(*order)
    )
    if limit is not None:
        query = query.limit(limit)
    for row in conn.execute(query.execution_options(yield_per=1000)):
        yield DownloadRow(**row._asdict())


def get_state(conn: Connection, key: str) -> str | None:
    """A small named value kept between runs, or ``None``."""
    value: str | None = conn.execute(
        select(tracker_state.c.value).where(tracker_state.c.key == key)
    ).scalar()
    return value
