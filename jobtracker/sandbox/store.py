"""The sandbox's job registry and the ``GET /v0/batch/jobs`` query over it.

Current-shape jobs are also kept in a list sorted by ``(created_ms, seq)``: the ``when`` filter is
two bisections and the default listing (newest first, no status filter) touches only ``limit``
entries, so a listing over 10,000+ jobs stays cheap.  Legacy jobs are in the registry (their
detail endpoint works) but never in the index, because the list endpoint did not exist for them.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .jobs import FAILED, FINAL_STATUSES, SORT_KEYS, STATUSES, SimJob

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
WHEN_VALUES = ("created_before", "created_after")
DIRECTIONS = ("asc", "desc")


class QueryError(ValueError):
    """A list query parameter is invalid; the message is sent back with a 400."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Parsed parameters of ``GET /v0/batch/jobs``."""

    limit: int = DEFAULT_LIMIT
    statuses: frozenset[str] | None = None
    when: str | None = None
    timestamp_ms: int | None = None
    sort_by: str = "created"
    direction: str = "desc"


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def parse_list_query(params: Mapping[str, Sequence[str]], now_ms: int) -> ListQuery:
    """Validate query parameters the way the real API would, raising :class:`QueryError`.

    ``limit`` above the maximum is clamped (as the real service does) rather than rejected.
    ``timestamp_ms`` alone means ``created_before``; ``when`` alone means "relative to now".
    """
    raw_limit = _single(params, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise QueryError(f"limit must be an integer, got {raw_limit!r}") from None
        if limit < 1:
            raise QueryError("limit must be at least 1")
        limit = min(limit, MAX_LIMIT)

    statuses: frozenset[str] | None = None
    if params.get("status"):
        # Accept both ?status=A&status=B and ?status=A,B; clients differ in how they repeat.
        wanted = {s.strip().upper() for v in params["status"] for s in v.split(",") if s.strip()}
        unknown = wanted.difference(STATUSES)
        if unknown:
            raise QueryError(f"unknown status {sorted(unknown)[0]!r}; expected one of {STATUSES}")
        statuses = frozenset(wanted)

    when = _single(params, "when")
    raw_ts = _single(params, "timestamp_ms")
    if when is not None and when not in WHEN_VALUES:
        raise QueryError(f"when must be one of {WHEN_VALUES}, got {when!r}")
    timestamp_ms: int | None = None
    if raw_ts is not None:
        try:
            timestamp_ms = int(raw_ts)
        except ValueError:
            raise QueryError(f"timestamp_ms must be an integer, got {raw_ts!r}") from None
        when = when or "created_before"
    elif when is not None:
        timestamp_ms = now_ms

    sort_by = _single(params, "sort_by") or "created"
    if sort_by not in SORT_KEYS:
        raise QueryError(f"sort_by must be one of {SORT_KEYS}, got {sort_by!r}")
    direction = (_single(params, "direction") or "desc").lower()
    if direction not in DIRECTIONS:
        raise QueryError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return ListQuery(limit, statuses, when, timestamp_ms, sort_by, direction)


class JobStore:
    """Thread-safe registry of :class:`SimJob` objects with a creation-time index."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, SimJob] = {}
        # (created_ms, seq, job_id) of current-shape jobs; seq breaks ties in insertion order.
        self._index: list[tuple[int, int, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, jobs: Iterable[SimJob]) -> None:
        """Register new jobs; raises ``ValueError`` (adding nothing) on a duplicate id."""
        batch = list(jobs)
        with self._lock:
            seen: set[str] = set()
            for job in batch:
                if job.job_id in self._jobs or job.job_id in seen:
                    raise ValueError(f"duplicate job id {job.job_id!r}")
                seen.add(job.job_id)
            entries = []
            for job in batch:
                self._jobs[job.job_id] = job
                if not job.legacy:
                    entries.append((job.created_ms, self._seq, job.job_id))
                self._seq += 1
            if len(entries) > 8:
                # One sort of the merged list beats many O(n) insorts for a bulk add.
                self._index.extend(entries)
                self._index.sort()
            else:
                for entry in entries:
                    bisect.insort(self._index, entry)

    def get(self, job_id: str) -> SimJob | None:
        """Return the job or ``None``."""
        return self._jobs.get(job_id)

    def view(self) -> Mapping[str, SimJob]:
        """A read-only live view of all jobs by id."""
        return MappingProxyType(self._jobs)

    def set_final(self, job_id: str, status: str, error: str | None) -> None:
        """Change how a job ends; raises ``KeyError`` for an unknown id."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"final status must be one of {FINAL_STATUSES}, got {status!r}")
        with self._lock:
            job = self._jobs[job_id]
            job.final_status = status
            job.error = error if status == FAILED else None

    def list_jobs(self, query: ListQuery, now_ms: int) -> list[SimJob]:
        """Answer a list query at instant ``now_ms`` (current-shape jobs only)."""
        with self._lock:
            lo, hi = 0, len(self._index)
            if query.when == "created_before" and query.timestamp_ms is not None:
                # (ts,) sorts before every (ts, seq, id): hi = first entry with created >= ts.
                hi = bisect.bisect_left(self._index, (query.timestamp_ms,))
            elif query.when == "created_after" and query.timestamp_ms is not None:
                lo = bisect.bisect_left(self._index, (query.timestamp_ms + 1,))
            if query.sort_by == "created":
                return list(self._take_by_created(lo, hi, query, now_ms))
            candidates = [self._jobs[job_id] for _, _, job_id in self._index[lo:hi]]
            if query.statuses is not None:
                candidates = [j for j in candidates if j.status_at(now_ms) in query.statuses]
        return self._sorted_by(candidates, query, now_ms)

    def _take_by_created(self, lo: int, hi: int, query: ListQuery, now_ms: int) -> Iterator[SimJob]:
        # Walk the index from the requested end and stop after `limit` matches, so the common
        # "newest 50" request costs O(limit) however many jobs exist.
        positions = range(hi - 1, lo - 1, -1) if query.direction == "desc" else range(lo, hi)
        taken = 0
        for pos in positions:
            job = self._jobs[self._index[pos][2]]
            if query.statuses is not None and job.status_at(now_ms) not in query.statuses:
                continue
            yield job
            taken += 1
            if taken >= query.limit:
                return

    @staticmethod
    def _sorted_by(candidates: list[SimJob], query: ListQuery, now_ms: int) -> list[SimJob]:
        # Jobs that have not started/ended yet have no value to sort on; they go last in either
        # direction (they are the least interesting answer to "sort by ended").
        with_value = []
        without_value = []
        for job in candidates:
            value = job.timestamp_ms(query.sort_by, now_ms)
            if value is None:
                without_value.append(job)
            else:
                with_value.append((value, job.created_ms, job))
        with_value.sort(key=lambda item: (item[0], item[1]), reverse=query.direction == "desc")
        ordered = [job for _, _, job in with_value] + without_value
        return ordered[: query.limit]
