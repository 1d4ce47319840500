"""Schema migrations: up, down, up again; no drift from the models; un-migrated databases."""

from __future__ import annotations

import ast
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from jobtracker import db
from jobtracker.errors import DatabaseNotReady
from jobtracker.schema import VIEW_NAMES, metadata
from jobtracker.tracker import Tracker

MakeTracker = Callable[..., Tracker]

CORE_TABLES = {"jobs", "job_configs", "job_inputs", "job_status_history", "downloads"}
PAYLOAD = {
    "job_id": "m-1",
    "state": {"status": "QUEUED", "created_timestamp_ms": 1_700_000_000_000},
}


def env_include_object() -> Callable[..., bool]:
    """The very ``include_object`` function of ``migrations/env.py`` (compiled from its source).

    env.py runs the migrations when imported, so only the function's definition is taken.
    """
    tree = ast.parse((db.migrations_dir() / "env.py").read_text(encoding="utf-8"))
    nodes: list[ast.stmt] = [
        node
        for node in tree.body
        if (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        or (isinstance(node, ast.FunctionDef) and node.name == "_include_object")
    ]
    assert any(isinstance(node, ast.FunctionDef) for node in nodes), "env.py: no _include_object"
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "env.py", "exec"), namespace)
    function: Callable[..., bool] = namespace["_include_object"]
    return function


def schema_names(tracker: Tracker) -> tuple[set[str], set[str]]:
    with tracker.engine.connect() as conn:
        inspector = inspect(conn)
        return set(inspector.get_table_names()), set(inspector.get_view_names())


# --- up and down ---------------------------------------------------------------------------


def test_upgrade_downgrade_upgrade(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url, upgrade=False)
    assert tracker.current_revision() is None

    tracker.upgrade()
    head = tracker.head_revision()
    assert tracker.current_revision() == head
    tables, views = schema_names(tracker)
    assert set(metadata.tables) | {"alembic_version"} == tables
    assert tables >= CORE_TABLES
    assert views == set(VIEW_NAMES)
    assert tracker.ingest([PAYLOAD]).inserted == 1

    tracker.downgrade("base")
    assert tracker.current_revision() is None
    assert schema_names(tracker) == ({"alembic_version"}, set())
    with pytest.raises(DatabaseNotReady, match="jobtracker db upgrade"):
        tracker.jobs()

    tracker.upgrade()
    assert tracker.current_revision() == head
    assert schema_names(tracker) == (tables, views)
    assert tracker.jobs() == []
    assert tracker.ingest([PAYLOAD]).inserted == 1
    assert [r.job_id for r in tracker.jobs()] == ["m-1"]


def test_upgrade_twice_is_harmless(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    tracker.ingest([PAYLOAD])
    tracker.upgrade()
    assert tracker.current_revision() == tracker.head_revision()
    assert [r.job_id for r in tracker.jobs()] == ["m-1"]


def test_each_revision_downgrades_and_upgrades_one_step(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    script = ScriptDirectory.from_config(db.alembic_config())
    revisions = [r.revision for r in script.walk_revisions()]  # newest first
    assert revisions[0] == tracker.head_revision()
    for revision in revisions[1:]:
        tracker.downgrade(revision)
        assert tracker.current_revision() == revision
    tracker.upgrade()
    assert tracker.current_revision() == revisions[0]
    assert tracker.ingest([PAYLOAD]).inserted == 1


def test_downgrading_one_step_keeps_every_row(db_url: str, core_make_tracker: MakeTracker) -> None:
    # A batch-mode table rebuild on SQLite drops the old parent table, and with foreign keys on
    # that cascades into every child table: a downgrade must keep the data it does not drop.
    tracker = core_make_tracker(db_url)
    completed = {
        "job_id": "m-2",
        "request": {"models": {"face": {}, "prosody": {}}, "urls": ["https://example.com/a"]},
        "state": {
            "status": "COMPLETED",
            "created_timestamp_ms": 1_700_000_000_000,
            "started_timestamp_ms": 1_700_000_001_000,
            "ended_timestamp_ms": 1_700_000_004_000,
        },
    }
    assert tracker.ingest([PAYLOAD, completed]).inserted == 2

    def counts() -> dict[str, int]:
        with tracker.engine.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                for t in sorted(CORE_TABLES)
            }

    before = counts()
    assert before == {
        "downloads": 2,
        "job_configs": 2,
        "job_inputs": 1,
        "job_status_history": 2,
        "jobs": 2,
    }
    script = ScriptDirectory.from_config(db.alembic_config())
    for revision in [r.revision for r in script.walk_revisions()][1:]:
        tracker.downgrade(revision)
        assert counts() == before, f"rows lost going down to {revision}"
    tracker.upgrade()
    assert counts() == before
    assert tracker.job("m-2").models == ["face", "prosody"]


def test_migrated_schema_matches_the_models(db_url: str, core_make_tracker: MakeTracker) -> None:
    tracker = core_make_tracker(db_url)
    include_object = env_include_object()
    # The views are the migrations' own; autogenerate must leave them alone.
    assert include_object(None, "job_run_times", "table", True, None) is False
    assert include_object(None, "jobs", "table", True, None) is True
    env_source = (db.migrations_dir() / "env.py").read_text(encoding="utf-8")
    assert "compare_type=True" in env_source

    with tracker.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": include_object,
                "target_metadata": metadata,
            },
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


# --- databases that are not ready ------------------------------------------------------------

READS: list[tuple[str, Callable[[Tracker], object]]] = [
    ("job", lambda t: t.job("x")),
    ("jobs", lambda t: t.jobs()),
    ("run_time", lambda t: t.run_time("x")),
    ("run_time_stats", lambda t: t.run_time_stats(by="model")),
    ("run_time_stats_day", lambda t: t.run_time_stats(by="day")),
    ("outstanding_downloads", lambda t: t.outstanding_downloads()),
    ("expiring_downloads", lambda t: t.outstanding_downloads(expiring_within=timedelta(hours=1))),
    ("ingest", lambda t: t.ingest([PAYLOAD])),
]


@pytest.mark.parametrize(("name", "call"), READS, ids=[name for name, _ in READS])
def test_every_method_on_an_unmigrated_database_says_upgrade(
    db_url: str, core_make_tracker: MakeTracker, name: str, call: Callable[[Tracker], object]
) -> None:
    tracker = core_make_tracker(db_url, upgrade=False)
    if db_url.startswith("postgresql"):
        expected = "has no jobtracker tables; run `jobtracker db upgrade`"
    else:
        expected = "no database at .*; create it with `jobtracker db upgrade`"
    with pytest.raises(DatabaseNotReady, match=expected) as info:
        call(tracker)
    assert info.value.exit_code == 2
    # Asking again still answers the same (readiness is not cached on failure).
    with pytest.raises(DatabaseNotReady, match="jobtracker db upgrade"):
        call(tracker)


def test_an_empty_sqlite_file_needs_an_upgrade(
    tmp_path: Path, core_make_tracker: MakeTracker
) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    conn.close()
    tracker = core_make_tracker(f"sqlite:///{path}", upgrade=False)
    with pytest.raises(DatabaseNotReady, match="has no jobtracker tables; run `jobtracker db up"):
        tracker.jobs()


def test_a_read_does_not_create_a_missing_sqlite_file(
    tmp_path: Path, core_make_tracker: MakeTracker
) -> None:
    path = tmp_path / "sub" / "missing.db"
    tracker = core_make_tracker(f"sqlite:///{path}", upgrade=False)
    with pytest.raises(DatabaseNotReady, match=str(path)):
        tracker.jobs()
    with pytest.raises(DatabaseNotReady):
        tracker.outstanding_downloads()
    assert tracker.current_revision() is None
    assert not path.exists()
    assert not path.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_upgrade_creates_the_sqlite_file_and_its_directory(
    tmp_path: Path, core_make_tracker: MakeTracker
) -> None:
    path = tmp_path / "deep" / "er" / "jobs.db"
    tracker = core_make_tracker(f"sqlite:///{path}")
    assert path.is_file()
    assert tracker.current_revision() == tracker.head_revision()


def test_a_database_from_a_newer_version_is_refused(
    db_url: str, core_make_tracker: MakeTracker
) -> None:
    tracker = core_make_tracker(db_url)
    with tracker.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    reader = core_make_tracker(db_url, upgrade=False)
    with pytest.raises(DatabaseNotReady, match="newer") as info:
        reader.jobs()
    assert "9999_from_the_future" in str(info.value)
    assert info.value.current == "9999_from_the_future"
    assert info.value.head == reader.head_revision()


def test_an_older_revision_asks_for_an_upgrade(db_url: str, core_make_tracker: MakeTracker) -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    head = script.get_revision(db.head_revision())
    assert head is not None
    if not head.down_revision:
        pytest.skip("only one revision exists")
    previous = str(head.down_revision)
    tracker = core_make_tracker(db_url)
    tracker.downgrade(previous)
    reader = core_make_tracker(db_url, upgrade=False)
    with pytest.raises(DatabaseNotReady, match="run `jobtracker db upgrade`") as info:
        reader.jobs()
    assert f"is at revision {previous}" in str(info.value)
    assert info.value.current == previous
    assert info.value.head == head.revision


def test_a_password_never_appears_in_the_not_ready_message(
    pg_url: str, core_make_tracker: MakeTracker
) -> None:
    with_password = pg_url.replace("postgres@", "postgres:s3cr3t-pw@", 1)
    tracker = core_make_tracker(with_password, upgrade=False)
    with pytest.raises(DatabaseNotReady) as info:
        tracker.jobs()
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in tracker.display_url


# --- the scripts ship with the package --------------------------------------------------------


def test_migrations_dir_holds_the_alembic_scripts() -> None:
    location = db.migrations_dir()
    assert location.is_dir()
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()
    assert (location / "versions" / "0001_initial.py").is_file()
    script = ScriptDirectory.from_config(db.alembic_config())
    assert Path(script.dir).resolve() == location.resolve()
    assert script.get_current_head() == db.head_revision()
    assert "0001_initial" in {r.revision for r in script.walk_revisions()}


def test_the_schema_head_constant_is_alembics_head() -> None:
    # Commands compare the database with db.SCHEMA_HEAD to avoid loading Alembic; a new
    # migration must move the constant too.
    script = ScriptDirectory.from_config(db.alembic_config())
    assert script.get_current_head() == db.SCHEMA_HEAD
