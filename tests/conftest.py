"""Shared pytest fixtures for the jobtracker test suite."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pg_server import PG_BIN_ENV, PostgresServer, find_pg_bindir

from jobtracker.tracker import Tracker

# --- database fixtures ---
#
# ``db_url`` runs a test on both SQLite and PostgreSQL; ``sqlite_url`` and
# ``pg_url`` pin one backend.  The PostgreSQL server is started once per
# session, and only if some selected test needs it; every test gets its own
# fresh database on it.


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server shared by the whole session.

    Skipped when no PostgreSQL binaries are installed, except under CI
    (``CI=true``), where that is an error.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install "
            f"PostgreSQL (e.g. apt-get install postgresql) or set ${PG_BIN_ENV}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with PostgresServer(bindir) as server:
        yield server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a not-yet-existing SQLite file in the test's temp dir."""
    return f"sqlite:///{tmp_path}/jobtracker.db"


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a brand-new, empty PostgreSQL database for this test."""
    name = f"test_{uuid.uuid4().hex}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)  # DROP DATABASE ... WITH (FORCE)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of an empty database; tests using it run on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


# --- core test helpers (tests/test_core_*.py) ---
#
# The shared sample API responses live in ``shared/samples`` beside the repository (not copied
# into it); tests that read them are skipped where that folder is absent.

CORE_SAMPLES_DIR = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture
def core_samples() -> Path:
    """The shared sample responses directory; skips the test when it is missing."""
    if not (CORE_SAMPLES_DIR / "legacy" / "completed.json").is_file():
        pytest.skip(f"sample API responses not found in {CORE_SAMPLES_DIR}")
    return CORE_SAMPLES_DIR


@pytest.fixture
def core_sample(core_samples: Path) -> Callable[[str], Any]:
    """Load one sample response by its path below ``shared/samples`` (``legacy/failed.json``)."""

    def load(name: str) -> Any:
        return json.loads((core_samples / name).read_text(encoding="utf-8"))

    return load


@pytest.fixture
def core_make_tracker() -> Iterator[Callable[..., Tracker]]:
    """Build ``Tracker``s (migrated unless ``upgrade=False``); all are closed after the test."""
    made: list[Tracker] = []

    def make(
        url: str, *, clock: Callable[[], datetime] | None = None, upgrade: bool = True
    ) -> Tracker:
        tracker = Tracker(url, clock=clock)
        made.append(tracker)
        if upgrade:
            tracker.upgrade()
        return tracker

    yield make
    for tracker in made:
        tracker.close()
