"""`jobtracker download` / `downloads list|verify` as subprocesses against the sandbox.

The subprocess's tracker runs on real time, so these sandboxes start near real time
(``ManualClock(time.time())``). Every subprocess call has a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from jobtracker.client import BatchClient, RetryPolicy
from jobtracker.fetch import part_path
from jobtracker.layout import file_path
from jobtracker.sandbox import ManualClock, Sandbox
from jobtracker.schema import downloads
from jobtracker.tracker import Tracker

KEY = "sandbox-key"
FAST = RetryPolicy(base_s=0.01, floor_s=0.01, budget_s=10)
CURRENT_KINDS = ("predictions", "artifacts")
LEGACY_KINDS = ("predictions", "artifacts", "errors")

Key = tuple[str, str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def add_completed(sb: Sandbox, current: int, legacy: int) -> tuple[list[str], list[str]]:
    """Jobs that have all COMPLETED by the time this returns: (current ids, legacy ids)."""
    kwargs: dict[str, Any] = {"fail_fraction": 0.0, "queue_s": (1.0, 2.0), "run_s": (1.0, 2.0)}
    cur = sb.add_jobs(current, legacy_fraction=0.0, **kwargs) if current else []
    old = sb.add_jobs(legacy, legacy_fraction=1.0, **kwargs) if legacy else []
    sb.clock.advance(60)
    return cur, old


def expected_keys(current: list[str], legacy: list[str]) -> set[Key]:
    return {(j, k) for j in current for k in CURRENT_KINDS} | {
        (j, k) for j in legacy for k in LEGACY_KINDS
    }


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACKER_")}
    env["HUME_API_KEY"] = KEY
    return subprocess.run(
        [sys.executable, "-m", "jobtracker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def download_args(url: str, dest: Path, sb: Sandbox) -> list[str]:
    return ["download", "--db", url, "--dest", str(dest), "--api-url", sb.base_url]


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"not JSON: {result.stdout!r}; stderr: {result.stderr}")


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=31, clock=ManualClock(time.time()), artifact_bytes=32_000) as sandbox:
        yield sandbox


@pytest.fixture
def tracker(sqlite_url: str, sb: Sandbox) -> Iterator[Tracker]:
    with Tracker(sqlite_url, clock=lambda: datetime.fromtimestamp(sb.now(), UTC)) as t:
        t.upgrade()
        yield t


@pytest.fixture
def client(sb: Sandbox) -> Iterator[BatchClient]:
    with BatchClient(sb.base_url, KEY, max_rps=1000, retry=FAST) as c:
        yield c


def poll(tracker: Tracker, client: BatchClient, legacy_ids: list[str]) -> None:
    tracker.track(legacy_ids)
    summary = tracker.poll(client)
    assert summary.outcome == "ok", summary


def rows(tracker: Tracker) -> dict[Key, Any]:
    with tracker.read() as conn:
        return {(r.job_id, r.kind): r for r in conn.execute(select(downloads))}


def assert_all_done(sb: Sandbox, tracker: Tracker, dest: Path, keys: set[Key]) -> None:
    found = rows(tracker)
    assert set(found) == keys
    for (job_id, kind), r in found.items():
        assert r.state == "done", (job_id, kind, r.last_error)
        assert r.sha256 == sb.expected_sha256(job_id, kind)
        assert r.size_bytes == sb.expected_size(job_id, kind)
        assert Path(r.local_path) == file_path(dest, job_id, kind)
        assert sha256_file(Path(r.local_path)) == r.sha256


# --- download: summary and exit codes -------------------------------------------------------


def test_download_json_summary_exit_code_and_listing_of_failures(
    sb: Sandbox, tracker: Tracker, client: BatchClient, sqlite_url: str, tmp_path: Path
) -> None:
    (good, broken), legacy = add_completed(sb, 2, 1)
    poll(tracker, client, legacy)
    sb.set_final(broken, "FAILED")  # the API now refuses this job's files (400)
    dest = tmp_path / "results"

    result = cli(*download_args(sqlite_url, dest, sb), "--format", "json")

    assert result.returncode == 1, result.stderr  # some file failed; the rest are done
    (summary,) = json_out(result)
    assert summary["outcome"] == "partial"
    assert summary["files_done"] == 2 + 3
    assert summary["files_failed"] >= 2
    assert summary["dest"] == str(dest.resolve())
    good_keys = expected_keys([good], legacy)
    assert summary["bytes"] == sum(sb.expected_size(j, k) for j, k in good_keys)
    assert f"failed: {broken}" in result.stderr
    found = rows(tracker)
    assert set(found) == good_keys | {(broken, kind) for kind in CURRENT_KINDS}
    for job_id, kind in good_keys:
        done = found[(job_id, kind)]
        assert done.state == "done"
        assert done.sha256 == sb.expected_sha256(job_id, kind)
        assert sha256_file(Path(done.local_path)) == done.sha256
    for kind in CURRENT_KINDS:
        r = found[(broken, kind)]
        assert r.state in ("pending", "failed")
        assert r.attempts >= 1
        assert r.sha256 is None
        assert "HTTP 400" in r.last_error

    listed = cli("downloads", "list", "--db", sqlite_url)

    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split()[:4] == ["job_id", "kind", "state", "attempts"]
    assert "last_error" in header.split()
    shown = [line for line in lines if broken in line]
    assert len(shown) == 2
    assert all(good not in line for line in lines)
    cells = sorted(line.split()[:4] for line in shown)
    assert cells == [
        [broken, kind, found[(broken, kind)].state, str(found[(broken, kind)].attempts)]
        for kind in sorted(CURRENT_KINDS)
    ]
    assert all("HTTP 400" in line for line in shown)


# --- downloads verify -----------------------------------------------------------------------


def test_verify_requeues_missing_and_changed_files_and_download_restores_them(
    sb: Sandbox, tracker: Tracker, client: BatchClient, sqlite_url: str, tmp_path: Path
) -> None:
    current, legacy = add_completed(sb, 2, 1)
    poll(tracker, client, legacy)
    dest = tmp_path / "results"
    keys = expected_keys(current, legacy)
    assert tracker.download(client, dest=dest).files_done == 7
    missing_key, changed_key = (current[0], "artifacts"), (legacy[0], "predictions")
    file_path(dest, *missing_key).unlink()
    changed = file_path(dest, *changed_key)
    changed.write_bytes(changed.read_bytes()[:-1] + b" ")  # same size, other content

    result = cli("downloads", "verify", "--db", sqlite_url, "--format", "json")

    assert result.returncode == 1, result.stderr
    assert json_out(result) == [{"checked": 7, "ok": 5, "missing": 1, "changed": 1}]
    found = rows(tracker)
    for key, note in ((missing_key, "missing"), (changed_key, "changed")):
        r = found[key]
        assert r.state == "pending"
        assert r.sha256 is None
        assert r.last_error
        assert "verify" in r.last_error
        assert note in r.last_error
    assert all(r.state == "done" for k, r in found.items() if k not in (missing_key, changed_key))
    outstanding = {(d.job_id, d.kind) for d in tracker.outstanding_downloads()}
    assert outstanding == {missing_key, changed_key}

    sb.clear_log()
    again = cli(*download_args(sqlite_url, dest, sb), "--format", "json")

    assert again.returncode == 0, again.stderr
    (summary,) = json_out(again)
    assert summary["outcome"] == "ok"
    assert summary["files_done"] == 2
    assert len([r for r in sb.requests if r.status in (200, 206)]) == 2
    assert_all_done(sb, tracker, dest, keys)
    assert tracker.verify_downloads().as_dict() == {
        "checked": 7,
        "ok": 7,
        "missing": 0,
        "changed": 0,
    }


# --- downloads list --expiring-within -------------------------------------------------------


def test_list_expiring_within_shows_only_urls_expiring_soon_soonest_first(
    sb: Sandbox, tracker: Tracker, client: BatchClient, sqlite_url: str, tmp_path: Path
) -> None:
    current, (in_2h, in_30m, in_48h, done_soon) = add_completed(sb, 1, 4)
    ttl = {in_2h: 2 * 3600, in_30m: 1800, in_48h: 48 * 3600, done_soon: 600}
    for job_id, seconds in ttl.items():  # each job polled while URLs live that long
        sb.url_ttl_s = seconds
        poll(tracker, client, [job_id])
    found = rows(tracker)
    for job_id, seconds in ttl.items():
        expires = datetime.fromtimestamp(int(sb.now() + seconds), UTC)
        for kind in LEGACY_KINDS:
            assert found[(job_id, kind)].url_expires_at.replace(tzinfo=UTC) == expires
    # Files already downloaded are not outstanding, however soon their URLs expire.
    assert tracker.download(client, dest=tmp_path / "results", job_id=done_soon).files_done == 3

    result = cli(
        "downloads", "list", "--expiring-within", "24h", "--db", sqlite_url, "--format", "json"
    )

    assert result.returncode == 0, result.stderr
    entries = json_out(result)
    assert [e["job_id"] for e in entries] == [in_30m] * 3 + [in_2h] * 3
    assert {e["kind"] for e in entries} == set(LEGACY_KINDS)
    stamps = [e["url_expires_at"] for e in entries]
    assert stamps == sorted(stamps)
    assert all(e["state"] == "pending" for e in entries)
    assert all("REDACTED" in e["source_url"] for e in entries), "signatures stay hidden"
    # Without the filter: everything outstanding, current jobs (no URL to expire) included.
    everything = {d.job_id for d in tracker.outstanding_downloads()}
    assert everything == {in_2h, in_30m, in_48h, *current}
    within_1h = tracker.outstanding_downloads(expiring_within=timedelta(hours=1))
    assert {d.job_id for d in within_1h} == {in_30m}


# --- SIGKILL mid-file -----------------------------------------------------------------------

HUGE = 120_000_000


def wait_for_growing_part(dest: Path, proc: subprocess.Popen[bytes], at_least: int) -> Path:
    """The first .part file holding at least ``at_least`` bytes (bounded wait)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the downloader ended before it could be killed"
        for part in dest.glob("*/.artifacts.zip.part"):
            try:
                if part.stat().st_size >= at_least:
                    return part
            except FileNotFoundError:
                continue
        time.sleep(0.002)
    pytest.fail("no .part file grew within 60 s")


@pytest.mark.slow
def test_sigkill_mid_file_leaves_nothing_wrongly_done_and_the_next_run_resumes(
    sqlite_url: str, tmp_path: Path
) -> None:
    with (
        Sandbox(seed=32, clock=ManualClock(time.time()), artifact_bytes=HUGE) as sb,
        Tracker(sqlite_url, clock=lambda: datetime.fromtimestamp(sb.now(), UTC)) as tracker,
        BatchClient(sb.base_url, KEY, max_rps=1000, retry=FAST) as client,
    ):
        tracker.upgrade()
        current, legacy = add_completed(sb, 1, 1)
        keys = expected_keys(current, legacy)
        poll(tracker, client, legacy)
        dest = tmp_path / "results"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACKER_")}
        env["HUME_API_KEY"] = KEY
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobtracker", *download_args(sqlite_url, dest, sb)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_growing_part(dest, proc, 4 << 20)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        # Killed mid-file: an artifact is only a .part, smaller than the whole body.
        partial = {
            job_id: part_path(file_path(dest, job_id, "artifacts")).stat().st_size
            for job_id in current + legacy
            if part_path(file_path(dest, job_id, "artifacts")).exists()
        }
        assert any(size > 0 for size in partial.values())
        assert all(size < HUGE for size in partial.values())
        # The database is intact, and nothing is done unless its file is whole and right.
        path = make_url(sqlite_url).database
        assert path is not None
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        found = rows(tracker)
        assert set(found) == keys
        for (job_id, kind), r in found.items():
            if r.state == "done":
                assert r.sha256 == sb.expected_sha256(job_id, kind)
                assert sha256_file(Path(r.local_path)) == r.sha256
            else:
                assert r.sha256 is None
                assert not file_path(dest, job_id, kind).exists()
        for job_id in partial:
            stuck = found[(job_id, "artifacts")]
            assert stuck.state == "pending"
            assert stuck.claimed_by
            assert f":{proc.pid}:" in stuck.claimed_by

        # The next run takes the dead run's claims over at once and resumes the .part files.
        sb.clear_log()
        result = cli(*download_args(sqlite_url, dest, sb), "--format", "json", timeout=120)

        assert result.returncode == 0, result.stderr
        (summary,) = json_out(result)
        assert summary["outcome"] == "ok"
        assert summary["files_failed"] == 0
        assert_all_done(sb, tracker, dest, keys)
        assert not list(dest.rglob("*.part"))
        ranges = {
            r.headers.get("Range") for r in sb.requests if r.path.endswith(("/artifacts", ".zip"))
        }
        for size in partial.values():
            if size:
                assert f"bytes={size}-" in ranges
        shutil.rmtree(dest)  # 240 MB: do not keep it in pytest's retained temp dirs
