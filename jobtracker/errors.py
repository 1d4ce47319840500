"""The one exception hierarchy of jobtracker.

Every error the library raises on purpose is a :class:`JobTrackerError`; the CLI maps each
class to a message and an exit code in one place (``cli.py``). Subclasses carry the context a
person needs to act (job id, where a record came from, a redacted URL) and never a secret.
"""

from __future__ import annotations


class JobTrackerError(Exception):
    """Base class of every error jobtracker raises on purpose."""

    #: Exit code the CLI uses for this error class.
    exit_code = 1


class ConfigError(JobTrackerError):
    """A setting is missing or invalid (database URL, API URL, API key...)."""

    exit_code = 2


class DatabaseNotReady(JobTrackerError):
    """The database is missing, un-migrated, or at an older revision than this code."""

    exit_code = 2

    def __init__(self, message: str, *, current: str | None = None, head: str | None = None):
        super().__init__(message)
        self.current = current
        self.head = head


class ParseError(JobTrackerError):
    """A payload is not a batch-job response jobtracker understands.

    ``where`` names the place the record came from (``file.jsonl:12``), when known.
    """

    def __init__(self, message: str, *, job_id: str | None = None, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.where = where

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        job = ""
        if self.job_id:
            shown = self.job_id if len(self.job_id) <= 60 else f"{self.job_id[:59]}…"
            job = f" (job {shown})"
        return f"{prefix}{self.message}{job}"


class AuthError(JobTrackerError):
    """The API rejected the key (401, or the ``Invalid ApiKey`` fault payload)."""

    exit_code = 3


class ApiError(JobTrackerError):
    """The batch API answered with an error, or could not be reached, after retries."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url


class JobNotFound(ApiError):
    """The API says the job does not exist (404)."""


class LockHeld(JobTrackerError):
    """Another process holds the lease this command needs (exit code 75, EX_TEMPFAIL)."""

    exit_code = 75

    def __init__(self, message: str, *, holder: str | None = None):
        super().__init__(message)
        self.holder = holder


class DownloadError(JobTrackerError):
    """A result file could not be fetched or failed verification."""

    def __init__(self, message: str, *, job_id: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.kind = kind


class UnknownJob(JobTrackerError):
    """The job is not in the database."""

    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id!r} in the database")
        self.job_id = job_id
