"""A thread-safe log of every request either sandbox host received."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One received request and what the sandbox answered.

    ``role`` is ``"api"`` or ``"storage"``; ``path`` is the raw (percent-encoded) path without
    the query; ``time`` is the sandbox clock, ``wall_time`` the real time; ``fault`` names the
    injected fault, if any.
    """

    role: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int
    time: float
    wall_time: float
    fault: str | None = None


class RequestLog:
    """Append-only (until cleared) list of :class:`RequestRecord`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        """Add one record."""
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        """A snapshot copy of all records, oldest first."""
        with self._lock:
            return list(self._records)

    def count(self, role: str | None = None) -> int:
        """Number of records, optionally only for one host role."""
        with self._lock:
            if role is None:
                return len(self._records)
            return sum(1 for record in self._records if record.role == role)

    def clear(self) -> None:
        """Forget all records."""
        with self._lock:
            self._records.clear()
