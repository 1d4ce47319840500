"""Resolve settings: explicit argument > environment variable > default.

Environment variables: ``JOBTRACKER_DB`` (database URL), ``JOBTRACKER_API_URL`` (batch API base
URL), ``HUME_API_KEY`` (the API key; read from the environment only, never from a command line,
where ``ps`` would show it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jobtracker.errors import ConfigError

DB_ENV = "JOBTRACKER_DB"
API_URL_ENV = "JOBTRACKER_API_URL"
API_KEY_ENV = "HUME_API_KEY"
DEFAULT_API_URL = "https://api.hume.ai"


def data_dir() -> Path:
    """The per-user data directory jobtracker uses by default (XDG on Linux)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "jobtracker"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "jobtracker"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jobtracker"


def default_db_url() -> str:
    """The embedded default: an SQLite file in the user's data directory."""
    return f"sqlite:///{data_dir() / 'jobtracker.db'}"


def resolve_db_url(url: str | None = None) -> str:
    """The database URL to use: ``url``, else ``$JOBTRACKER_DB``, else the embedded default.

    A bare filesystem path is accepted and treated as an SQLite file.
    """
    chosen = url or os.environ.get(DB_ENV) or default_db_url()
    if "://" not in chosen:
        chosen = f"sqlite:///{Path(chosen).expanduser().resolve()}"
    if chosen.startswith("postgres://") or chosen.startswith("postgresql://"):
        # psycopg 3 is the driver we ship as the `postgres` extra; SQLAlchemy would otherwise
        # look for psycopg2.
        chosen = "postgresql+psycopg://" + chosen.split("://", 1)[1]
    return chosen


def resolve_api_url(url: str | None = None) -> str:
    """The batch API base URL: ``url``, else ``$JOBTRACKER_API_URL``, else the Hume API."""
    chosen = (url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
    if not chosen.startswith(("http://", "https://")):
        raise ConfigError(f"API URL must start with http:// or https://, got {chosen[:60]!r}")
    return chosen


def resolve_api_key(key: str | None = None) -> str:
    """The API key: ``key`` (Python callers), else ``$HUME_API_KEY``."""
    chosen = key or os.environ.get(API_KEY_ENV)
    if not chosen:
        raise ConfigError(f"no API key: set {API_KEY_ENV} in the environment")
    return chosen.strip()
