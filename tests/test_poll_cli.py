"""`jobtracker poll` and friends as cron runs them: real processes, exit codes, locks, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobtracker.sandbox import FaultConfig, ManualClock, Sandbox
from jobtracker.schema import job_configs, jobs, poll_runs
from jobtracker.tracker import Tracker

KEY = "sandbox-key"
TIMEOUT = 60
SLOW = FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.3)


@dataclass
class Setup:
    sb: Sandbox
    url: str
    path: Path
    env: dict[str, str]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any jobtracker setting, and a private data directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JOBTRACKER_") and k != "HUME_API_KEY"
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["HUME_API_KEY"] = KEY
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    with Tracker(url) as tracker:
        tracker.upgrade()
    # Real time (frozen): job ages as the subprocess's own clock sees them are sane.
    with Sandbox(seed=101, clock=ManualClock(time.time())) as sb:
        yield Setup(sb, url, path, clean_env(tmp_path))


def jobtracker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobtracker", *args]


def run(
    *args: str, env: dict[str, str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        jobtracker_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout
    )


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        jobtracker_cmd(*args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def poll_args(s: Setup, *extra: str) -> list[str]:
    return ["poll", "--api-url", s.sb.base_url, "--db", s.url, "--max-rps", "500", *extra]


def count_jobs(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        count: int = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()
    return count


def wait_for_jobs(path: Path, proc: subprocess.Popen[str], at_least: int) -> int:
    """Wait (bounded) until the poll process has committed ``at_least`` jobs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        count = count_jobs(path)
        if count >= at_least:
            return count
        assert proc.poll() is None, "the poll ended before the test could interrupt it"
        time.sleep(0.02)
    pytest.fail(f"no {at_least} jobs committed within 30s")


def stored(url: str) -> dict[str, Any]:
    with Tracker(url) as tracker, tracker.read() as conn:
        models: dict[str, set[str]] = {}
        for job_id, model in conn.execute(select(job_configs.c.job_id, job_configs.c.model)):
            models.setdefault(job_id, set()).add(model)
        return {
            row.job_id: (row.status, row.response_shape, models.get(row.job_id, set()))
            for row in conn.execute(select(jobs))
        }


def assert_stored_as_in_sandbox(url: str, sb: Sandbox, at_least: int) -> dict[str, Any]:
    rows = stored(url)
    assert len(rows) >= at_least
    now_ms = round(sb.now() * 1000)
    for job_id, (status, shape, models) in rows.items():
        sim = sb.jobs[job_id]
        assert status == sim.status_at(now_ms)
        assert shape == ("legacy" if sim.legacy else "current")
        assert models == set(sim.models)
    return rows


def runs_of(url: str) -> list[dict[str, Any]]:
    with Tracker(url) as tracker, tracker.read() as conn:
        return [dict(r._mapping) for r in conn.execute(select(poll_runs).order_by(poll_runs.c.id))]


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path, timeout=10)
    try:
        result: str = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return result


def slow_workload(sb: Sandbox, current: int, legacy: int) -> list[str]:
    """Jobs for a poll that takes seconds under SLOW faults; returns the legacy ids."""
    sb.add_jobs(current, spread_s=600)
    return sb.add_jobs(legacy, legacy_fraction=1.0, spread_s=600)


# --- the happy path -------------------------------------------------------------------------


def test_track_then_poll_prints_one_line_and_records_the_run(setup: Setup) -> None:
    sb = setup.sb
    sb.add_jobs(20, spread_s=300)
    legacy = sb.add_job(legacy=True, created_at=sb.now() - 600, status="FAILED")
    tracked = run("track", legacy, "--note", "from a test", "--db", setup.url, env=setup.env)
    assert tracked.returncode == 0, tracked.stderr
    assert "tracking 1 new job id(s)" in tracked.stderr

    done = run(*poll_args(setup), env=setup.env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("poll ok: ")
    assert "21 new" in lines[0]
    rows = assert_stored_as_in_sandbox(setup.url, sb, 21)
    assert set(rows) == set(sb.jobs)
    assert rows[legacy][:2] == ("FAILED", "legacy")

    as_json = run(*poll_args(setup, "--format", "json"), env=setup.env)
    assert as_json.returncode == 0, as_json.stderr
    (summary,) = json.loads(as_json.stdout)
    assert summary["outcome"] == "ok"
    assert summary["jobs_new"] == 0
    assert summary["requests"] >= 1
    assert summary["run_id"] == 2

    listed = run("runs", "list", "--db", setup.url, "--format", "json", env=setup.env)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [r["id"] for r in runs] == [2, 1]
    assert all(r["command"] == "poll" and r["outcome"] == "ok" for r in runs)
    assert runs[1]["jobs_changed"] == 21
    assert runs[0]["requests"] == summary["requests"]
    assert runs[0]["host"] == socket.gethostname()


# --- locking --------------------------------------------------------------------------------


def test_two_polls_at_once_one_runs_the_other_exits_75(setup: Setup) -> None:
    # Under SLOW faults the winner needs seconds: a list request and 5 fetches one at a time.
    legacy = slow_workload(setup.sb, 20, 5)
    with Tracker(setup.url) as tracker:
        tracker.track(legacy)
    setup.sb.faults = SLOW
    args = poll_args(setup, "--concurrency", "1")
    procs = [spawn(*args, env=setup.env) for _ in range(2)]
    try:
        results = [(p, *p.communicate(timeout=TIMEOUT)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 75], [(p.returncode, err) for p, _, err in results]
    (winner,) = [p for p, _, _ in results if p.returncode == 0]
    (loser_err,) = [err for p, _, err in results if p.returncode == 75]
    assert f"{socket.gethostname()}:{winner.pid}:" in loser_err
    assert "holds the lock" in loser_err
    runs = runs_of(setup.url)
    assert [r["pid"] for r in runs] == [winner.pid]


# --- signals --------------------------------------------------------------------------------


def test_sigkill_mid_run_loses_nothing_committed_and_the_next_poll_takes_over(
    setup: Setup,
) -> None:
    sb = setup.sb
    legacy = slow_workload(sb, 1200, 10)
    with Tracker(setup.url) as tracker:
        tracker.track(legacy)
    sb.faults = SLOW
    proc = spawn(*poll_args(setup, "--concurrency", "1"), env=setup.env)
    try:
        wait_for_jobs(setup.path, proc, 500)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)  # reaps it: its pid no longer exists
    assert proc.returncode == -signal.SIGKILL
    assert integrity(setup.path) == "ok"
    committed = assert_stored_as_in_sandbox(setup.url, sb, 500)
    assert len(committed) < len(sb.jobs)
    (killed_run,) = runs_of(setup.url)
    assert killed_run["pid"] == proc.pid

    sb.faults = None
    started = time.monotonic()
    done = run(*poll_args(setup), env=setup.env)
    assert done.returncode == 0, done.stderr
    # The dead holder's lease (valid for 10 more minutes) did not make it wait.
    assert time.monotonic() - started < 30
    assert done.stdout.startswith("poll ok")
    rows = assert_stored_as_in_sandbox(setup.url, sb, len(sb.jobs))
    assert set(rows) == set(sb.jobs)
    assert integrity(setup.path) == "ok"


def test_sigterm_mid_run_exits_1_and_records_an_interrupted_run(setup: Setup) -> None:
    sb = setup.sb
    legacy = slow_workload(sb, 1200, 10)
    with Tracker(setup.url) as tracker:
        tracker.track(legacy)
    sb.faults = SLOW
    proc = spawn(*poll_args(setup, "--concurrency", "1"), env=setup.env)
    try:
        wait_for_jobs(setup.path, proc, 500)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 1, err
    assert took < 5
    assert "received SIGTERM" in err
    assert out.startswith("poll interrupted")
    (interrupted,) = runs_of(setup.url)
    assert interrupted["outcome"] == "interrupted"
    assert interrupted["finished_at"] is not None
    committed = assert_stored_as_in_sandbox(setup.url, sb, 500)
    assert len(committed) < len(sb.jobs)
    assert integrity(setup.path) == "ok"


def test_second_ctrl_c_exits_130_and_the_run_row_says_so(setup: Setup) -> None:
    sb = setup.sb
    legacy = sb.add_jobs(10, legacy_fraction=1.0)
    with Tracker(setup.url) as tracker:
        tracker.track(legacy)
    # One fetch at a time, a second each: after the first Ctrl-C the run needs about a
    # second to finish the fetch in flight, so the second Ctrl-C always lands in the run.
    sb.faults = FaultConfig(rate=1.0, kinds=("slow",), slow_s=1.0)
    proc = spawn(*poll_args(setup, "--no-discover", "--concurrency", "1"), env=setup.env)
    try:
        deadline = time.monotonic() + 30
        while sb.request_count() < 1 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    (row,) = runs_of(setup.url)
    assert row["finished_at"] is not None
    assert row["outcome"] == "interrupted"


def test_api_down_exits_1_and_records_a_failed_run(setup: Setup) -> None:
    setup.sb.add_jobs(5)
    # Retry-After: 0 keeps the client's default retries short (its floor is 0.2 s).
    setup.sb.faults = FaultConfig(rate=1.0, kinds=("429",), retry_after=("0",))
    done = run(*poll_args(setup), env=setup.env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("poll failed")
    assert "HTTP 429" in done.stderr
    assert "gave up after 6 attempt(s)" in done.stderr
    (row,) = runs_of(setup.url)
    assert row["outcome"] == "failed"
    assert "HTTP 429" in row["error"]
    assert setup.sb.request_count() == 6


def test_max_duration_stops_early_and_still_exits_0(setup: Setup) -> None:
    slow_workload(setup.sb, 1200, 0)
    setup.sb.faults = SLOW
    done = run(*poll_args(setup, "--max-duration", "0.5s"), env=setup.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("poll time_limit")
    (row,) = runs_of(setup.url)
    assert row["outcome"] == "time_limit"
    assert 0 < count_jobs(setup.path) < 1200


# --- configuration errors -------------------------------------------------------------------


def test_wrong_key_exits_3_without_showing_the_key(setup: Setup) -> None:
    setup.sb.add_jobs(3)
    secret = "sk-Wrong-Key-5b7e0c1d9a"
    env = {**setup.env, "HUME_API_KEY": secret}
    # -vv: every request and the debug logs of the HTTP stack are on stderr too.
    done = run("-vv", *poll_args(setup), env=env)
    assert done.returncode == 3, done.stderr
    assert "Invalid ApiKey" in done.stderr
    assert "HUME_API_KEY" in done.stderr
    assert "GET /v0/batch/jobs" in done.stderr
    assert secret not in done.stdout
    assert secret not in done.stderr
    assert [r["outcome"] for r in runs_of(setup.url)] == ["failed"]


def test_missing_key_exits_2(setup: Setup) -> None:
    env = {k: v for k, v in setup.env.items() if k != "HUME_API_KEY"}
    done = run(*poll_args(setup), env=env)
    assert done.returncode == 2
    assert "HUME_API_KEY" in done.stderr
    assert setup.sb.request_count() == 0


def test_unmigrated_database_exits_2_naming_db_upgrade(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    for path in (missing, empty):
        args = ["poll", "--api-url", setup.sb.base_url, "--db", f"sqlite:///{path}"]
        done = run(*args, env=setup.env)
        assert done.returncode == 2, done.stderr
        assert "jobtracker db upgrade" in done.stderr
    assert not missing.exists()
    assert setup.sb.request_count() == 0


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = run("demo", "--db", url, env=clean_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "36/36 jobs finished after" in done.stdout
    assert "Run times by model" in done.stdout
    assert "poll  1:" in done.stdout
    assert integrity(tmp_path / "demo.db") == "ok"
