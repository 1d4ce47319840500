"""Write parsed job results, in bulk, on a connection whose transaction the caller opened.

One call handles one batch: it reads the stored status and payload hash of every job in the
batch with one query, then classifies each incoming result:

* new       -> insert the job, its configs, inputs, first history row and download rows;
* changed   -> update the job, replace configs/inputs, add a history row if the status moved,
               upsert download rows (fresh signed URLs replace expired ones until fetched);
* unchanged -> nothing (a poll only stamps ``last_polled_at``);
* stale     -> a lower-ranked status than the stored one (an old cached answer): not applied,
               counted, so a status never goes backwards.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from jobtracker.db import RawJSON
from jobtracker.parse import PARSER_VERSION
from jobtracker.results import JobResult, JobStatus, ms_to_datetime
from jobtracker.schema import (
    downloads,
    job_configs,
    job_inputs,
    job_status_history,
    jobs,
    tracker_state,
)
from jobtracker.urls import url_expiry

# Keeps each IN (...) list well under every backend's bound-parameter limit.
_LOOKUP_CHUNK = 1000


@dataclass(slots=True)
class WriteStats:
    """What one or more write batches did."""

    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0

    def add(self, other: WriteStats) -> None:
        """Accumulate another batch's counts into this one."""
        self.received += other.received
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.stale += other.stale


@dataclass(slots=True)
class _Incoming:
    result: JobResult
    job_id: str
    payload_json: str
    payload_hash: str
    request_hash: str


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def canonical_json(payload: Any) -> str:
    """Serialise a payload deterministically (sorted keys), so equal payloads hash equally."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_results(
    conn: Connection,
    items: Iterable[tuple[JobResult, Any]],
    *,
    now: datetime,
    polled: bool = False,
    touch_unchanged: bool | None = None,
    next_poll: Callable[[JobResult], datetime | None] | None = None,
) -> WriteStats:
    """Upsert ``(result, raw_payload)`` pairs; every result must carry a job id.

    The poller's bookkeeping rides on the same rows: ``polled`` stamps ``last_polled_at`` on
    new and changed jobs and, unless ``touch_unchanged`` is False, on unchanged and stale ones
    too (a job seen only in passing in a listing is not worth rewriting); ``next_poll`` gives
    each of those jobs its next-poll time (and clears its poll failures).
    Idempotent: writing the same batch twice changes nothing the second time.
    """
    if touch_unchanged is None:
        touch_unchanged = polled
    stats = WriteStats()
    batch: dict[str, _Incoming] = {}
    for result, payload in items:
        stats.received += 1
        if result.job_id is None:
            raise ValueError("write_results needs a job id on every result")
        text = canonical_json(payload)
        request = payload.get("request") if isinstance(payload, dict) else None
        incoming = _Incoming(
            result,
            result.job_id,
            text,
            _hash(text),
            # Key order as received: the API answers a job's request the same way each time,
            # and a reordering would only cost one needless rewrite.
            _hash(json.dumps(request, separators=(",", ":"))) if request is not None else "",
        )
        # Within one batch the most advanced answer wins; equal ranks: the later one.
        prior = batch.get(incoming.job_id)
        if prior is None or result.status.rank >= prior.result.status.rank:
            batch[incoming.job_id] = incoming
    if not batch:
        return stats

    existing = _lookup(conn, list(batch))
    new: list[_Incoming] = []
    changed: list[tuple[_Incoming, Any]] = []
    touched: list[str] = []
    for job_id, inc in batch.items():
        row = existing.get(job_id)
        if row is None:
            new.append(inc)
            continue
        old_status = JobStatus(row.status)
        if inc.result.status.rank < old_status.rank:
            stats.stale += 1
            touched.append(job_id)
        elif (
            inc.payload_hash == row.payload_hash
            and row.parser_version == PARSER_VERSION
            and inc.result.status is old_status
        ):
            stats.unchanged += 1
            touched.append(job_id)
        else:
            changed.append((inc, row))
    stats.unchanged += stats.received - len(batch)  # duplicates inside the batch
    stats.inserted = len(new)
    stats.updated = len(changed)

    last_polled = now if polled else None
    if new:
        insert_rows(conn, jobs, [_job_row(inc, now, last_polled, None, next_poll) for inc in new])
    if changed:
        # An import is not a poll: it leaves the poller's columns alone.
        columns = list(_UPDATE_COLUMNS)
        if polled:
            columns.append("last_polled_at")
        if next_poll is not None:
            columns.extend(_SCHEDULE_COLUMNS)
        conn.execute(
            update(jobs)
            .where(jobs.c.job_id == bindparam("b_job_id"))
            .values({c: bindparam(c) for c in columns}),
            [_update_row(inc, row, now, columns, next_poll) for inc, row in changed],
        )
    # A job's request does not change after submission: where its hash is the stored one,
    # only the configs' copy of the run time moves; otherwise configs and inputs are rewritten.
    rewrite: list[_Incoming] = []
    same: list[_Incoming] = []
    for inc, row in changed:
        keep = row.request_hash == inc.request_hash and row.parser_version == PARSER_VERSION
        (same if keep else rewrite).append(inc)
    if same:
        conn.execute(
            update(job_configs)
            .where(job_configs.c.job_id == bindparam("b_job_id"))
            .values(run_time_s=bindparam("b_run_time")),
            [{"b_job_id": inc.job_id, "b_run_time": inc.result.get_run_time()} for inc in same],
        )
    rewrite_ids = [inc.job_id for inc in rewrite]
    for table in (job_configs, job_inputs):
        for chunk in _chunks(rewrite_ids):
            conn.execute(table.delete().where(table.c.job_id.in_(chunk)))
    _insert_children(conn, new + rewrite)
    _insert_history(conn, new, changed, now)
    # Download rows are made when a job completes. A job new to us, or one that was unfinished
    # until now (statuses never go back, so it was never terminal), has none yet: a plain
    # insert will do. A job that was already terminal (seen again with freshly signed URLs,
    # say) needs the upsert.
    completed = JobStatus.COMPLETED
    unfinished = (JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value)
    first = [i for i in new if i.result.status is completed]
    again: list[_Incoming] = []
    for inc, row in changed:
        if inc.result.status is completed:
            (first if row.status in unfinished else again).append(inc)
    insert_rows(conn, downloads, _download_rows(first, now))
    _upsert_downloads(conn, again, now)
    if polled and touch_unchanged and touched:
        if next_poll is None:
            for chunk in _chunks(touched):
                conn.execute(
                    update(jobs).where(jobs.c.job_id.in_(chunk)).values(last_polled_at=now)
                )
        else:
            conn.execute(
                update(jobs)
                .where(jobs.c.job_id == bindparam("b_job_id"))
                .values(
                    last_polled_at=now,
                    next_poll_at=bindparam("next_poll_at"),
                    poll_failures=0,
                    last_poll_error=None,
                ),
                [
                    {"b_job_id": job_id, "next_poll_at": next_poll(batch[job_id].result)}
                    for job_id in touched
                ],
            )
    return stats


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk INSERT of rows that all have the same keys.

    On SQLite the rows go to the driver's ``executemany`` as tuples, converted by each
    column's own bind processor: the same values SQLAlchemy would send, without its per-row
    parameter bookkeeping, which cost more than the inserts themselves on a bulk import.
    Elsewhere SQLAlchemy's own path is fast (psycopg batches rows into multi-row INSERTs).
    """
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), list(rows))
        return
    names = list(rows[0])
    dialect = conn.dialect
    processors = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names]
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    getter = operator.itemgetter(*names)
    convert = [(i, p) for i, p in enumerate(processors) if p is not None]
    params: list[Any] = []
    for row in rows:
        values = getter(row)
        values = list(values) if len(names) > 1 else [values]
        for i, process in convert:
            value = values[i]
            if value is not None:
                values[i] = process(value)
        params.append(tuple(values))
    conn.exec_driver_sql(sql, params)


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        yield ids[start : start + _LOOKUP_CHUNK]


def _lookup(conn: Connection, ids: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    query = select(
        jobs.c.job_id,
        jobs.c.status,
        jobs.c.payload_hash,
        jobs.c.request_hash,
        jobs.c.parser_version,
        jobs.c.terminal_seen_at,
    ).where(jobs.c.job_id.in_(bindparam("ids", expanding=True)))
    for chunk in _chunks(ids):
        for row in conn.execute(query, {"ids": list(chunk)}):
            found[row.job_id] = row
    return found


_UPDATE_COLUMNS = (
    "status",
    "job_type",
    "response_shape",
    "created_at",
    "started_at",
    "ended_at",
    "run_time_s",
    "queue_time_s",
    "error_message",
    "num_predictions",
    "num_errors",
    "callback_url",
    "notify",
    "raw_payload",
    "payload_hash",
    "request_hash",
    "parser_version",
    "last_changed_at",
    "terminal_seen_at",
)
_SCHEDULE_COLUMNS = ("next_poll_at", "poll_failures", "last_poll_error")


def _job_row(
    inc: _Incoming,
    now: datetime,
    last_polled: datetime | None,
    terminal_seen: datetime | None,
    next_poll: Callable[[JobResult], datetime | None] | None,
) -> dict[str, Any]:
    r = inc.result
    if r.status.is_terminal and terminal_seen is None:
        terminal_seen = now
    return {
        "job_id": inc.job_id,
        "status": r.status.value,
        "job_type": r.job_type,
        "response_shape": r.shape,
        "created_at": ms_to_datetime(r.created_ms),
        "started_at": ms_to_datetime(r.started_ms),
        "ended_at": ms_to_datetime(r.ended_ms),
        "run_time_s": r.get_run_time(),
        "queue_time_s": r.get_queue_time(),
        "error_message": r.error_message,
        "num_predictions": r.num_predictions,
        "num_errors": r.num_errors,
        "callback_url": r.callback_url,
        "notify": r.notify,
        "raw_payload": RawJSON(inc.payload_json),
        "payload_hash": inc.payload_hash,
        "request_hash": inc.request_hash,
        "parser_version": PARSER_VERSION,
        "first_seen_at": now,
        "last_changed_at": now,
        "terminal_seen_at": terminal_seen if r.status.is_terminal else None,
        "last_polled_at": last_polled,
        "next_poll_at": None if next_poll is None else next_poll(r),
        "poll_failures": 0,
        "last_poll_error": None,
    }


def _update_row(
    inc: _Incoming,
    old: Any,
    now: datetime,
    columns: Sequence[str],
    next_poll: Callable[[JobResult], datetime | None] | None,
) -> dict[str, Any]:
    row = _job_row(inc, now, now, old.terminal_seen_at, next_poll)
    out = {c: row[c] for c in columns}
    out["b_job_id"] = inc.job_id
    return out


def _insert_children(conn: Connection, fresh: Sequence[_Incoming]) -> None:
    configs: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for inc in fresh:
        r = inc.result
        run_time = r.get_run_time()
        for model, config in r.configs.items():
            configs.append(
                {"job_id": inc.job_id, "model": model, "config": config, "run_time_s": run_time}
            )
        for pos, url in enumerate(r.urls):
            inputs.append(
                {"job_id": inc.job_id, "kind": "url", "position": pos, "value": url, "detail": None}
            )
        for pos, file in enumerate(r.files):
            name = file.get("filename")
            inputs.append(
                {
                    "job_id": inc.job_id,
                    "kind": "file",
                    "position": pos,
                    "value": name if isinstance(name, str) else None,
                    "detail": file,
                }
            )
        for pos, text in enumerate(r.text):
            inputs.append(
                {
                    "job_id": inc.job_id,
                    "kind": "text",
                    "position": pos,
                    "value": text,
                    "detail": None,
                }
            )
    if configs:
        insert_rows(conn, job_configs, configs)
    if inputs:
        insert_rows(conn, job_inputs, inputs)


def _provider_time(r: JobResult) -> datetime | None:
    if r.status is JobStatus.QUEUED:
        return ms_to_datetime(r.created_ms)
    if r.status is JobStatus.IN_PROGRESS:
        return ms_to_datetime(r.started_ms)
    return ms_to_datetime(r.ended_ms)


def _insert_history(
    conn: Connection,
    new: Sequence[_Incoming],
    changed: Sequence[tuple[_Incoming, Any]],
    now: datetime,
) -> None:
    rows = [
        {
            "job_id": inc.job_id,
            "from_status": None,
            "to_status": inc.result.status.value,
            "provider_at": _provider_time(inc.result),
            "observed_at": now,
        }
        for inc in new
    ]
    rows.extend(
        {
            "job_id": inc.job_id,
            "from_status": old.status,
            "to_status": inc.result.status.value,
            "provider_at": _provider_time(inc.result),
            "observed_at": now,
        }
        for inc, old in changed
        if old.status != inc.result.status.value
    )
    if rows:
        insert_rows(conn, job_status_history, rows)


def _download_rows(completed: Sequence[_Incoming], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "job_id": inc.job_id,
            "kind": kind,
            "state": "pending",
            "source_url": url,
            "url_expires_at": url_expiry(url),
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for inc in completed
        for kind, url in inc.result.download_urls().items()
    ]


def _upsert_downloads(conn: Connection, completed: Sequence[_Incoming], now: datetime) -> None:
    rows = _download_rows(completed, now)
    if not rows:
        return
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(downloads)
    # A re-fetched legacy job carries freshly signed URLs: they replace the old ones for any
    # file not fetched yet; a file already on disk keeps its record.
    stmt = insert.on_conflict_do_update(
        index_elements=[downloads.c.job_id, downloads.c.kind],
        set_={
            "source_url": insert.excluded.source_url,
            "url_expires_at": insert.excluded.url_expires_at,
            "updated_at": insert.excluded.updated_at,
        },
        where=downloads.c.state != "done",
    )
    conn.execute(stmt, rows)


def set_state(conn: Connection, key: str, value: str, now: datetime) -> None:
    """Store a small named value between runs (cursor, remembered download directory)."""
    done = conn.execute(
        update(tracker_state).where(tracker_state.c.key == key).values(value=value, updated_at=now)
    )
    if done.rowcount == 0:
        conn.execute(tracker_state.insert().values(key=key, value=value, updated_at=now))
