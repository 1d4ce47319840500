"""jobtracker: keep every asynchronous batch job on record.

Poll the batch API, store each job's configs, inputs, status, times, errors and result files in
SQL, report run times, and download results before their links expire.
"""

from jobtracker._version import __version__
from jobtracker.errors import (
    ApiError,
    AuthError,
    ConfigError,
    DatabaseNotReady,
    DownloadError,
    JobNotFound,
    JobTrackerError,
    LockHeld,
    ParseError,
    UnknownJob,
)
from jobtracker.parse import parse_response
from jobtracker.results import JobResult, JobStatus
from jobtracker.tracker import IngestStats, Tracker

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "DatabaseNotReady",
    "DownloadError",
    "IngestStats",
    "JobNotFound",
    "JobResult",
    "JobStatus",
    "JobTrackerError",
    "LockHeld",
    "ParseError",
    "Tracker",
    "UnknownJob",
    "__version__",
    "parse_response",
]
