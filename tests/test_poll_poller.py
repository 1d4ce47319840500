"""The poller end to end: Tracker.poll against the sandbox over real HTTP, on real databases."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from jobtracker import leases
from jobtracker.client import BatchClient, RetryPolicy
from jobtracker.errors import AuthError, LockHeld
from jobtracker.poller import CURSOR_KEY, LEASE_NAME, PollOptions, next_poll_delay
from jobtracker.results import JobStatus
from jobtracker.sandbox import FaultConfig, Sandbox
from jobtracker.schema import (
    downloads,
    job_configs,
    job_status_history,
    jobs,
    poll_runs,
    tracked_jobs,
    tracker_state,
)
from jobtracker.schema import leases as leases_table
from jobtracker.tracker import Tracker

KEY = "sandbox-key"
JOBS_PATH = "/v0/batch/jobs"
FAST = RetryPolicy(base_s=0.01, floor_s=0.01, budget_s=10)
# Queued for hours: nothing moves unless the test advances the clock that far.
LONG_QUEUE = (20_000.0, 30_000.0)

MakeTracker = Callable[[str, Sandbox], Tracker]


@pytest.fixture
def make_tracker() -> Iterator[MakeTracker]:
    """Migrated Trackers whose clock follows the sandbox clock; closed after the test."""
    made: list[Tracker] = []

    def make(url: str, sb: Sandbox) -> Tracker:
        tracker = Tracker(url, clock=lambda: datetime.fromtimestamp(sb.now(), UTC))
        tracker.upgrade()
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.close()


def fast_client(sb: Sandbox, key: str = KEY, retry: RetryPolicy = FAST) -> BatchClient:
    return BatchClient(sb.base_url, key, max_rps=1000, retry=retry)


def ms(value: datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def now_ms(sb: Sandbox) -> int:
    return round(sb.now() * 1000)


def stored_ids(tracker: Tracker) -> set[str]:
    with tracker.read() as conn:
        return set(conn.execute(select(jobs.c.job_id)).scalars())


def job_count(tracker: Tracker) -> int:
    with tracker.read() as conn:
        count: int = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
    return count


def list_requests(sb: Sandbox) -> list[Any]:
    return [r for r in sb.requests if r.role == "api" and r.path == JOBS_PATH]


def detail_requests(sb: Sandbox) -> list[Any]:
    return [r for r in sb.requests if r.role == "api" and r.path.startswith(JOBS_PATH + "/")]


def expected_fields(sb: Sandbox, job_id: str) -> dict[str, Any]:
    """What the tracker should hold for a job that was fetched at the sandbox's current time."""
    sim = sb.jobs[job_id]
    current = now_ms(sb)
    status = sim.status_at(current)
    terminal = sim.is_terminal_at(current)
    if sim.legacy:
        # The legacy shape has whole seconds and no started time.
        created: int | None = sim.created_ms // 1000 * 1000
        started: int | None = None
        ended: int | None = sim.ended_ms // 1000 * 1000 if terminal else None
    else:
        created = sim.created_ms
        started = sim.started_ms if status != "QUEUED" else None
        ended = sim.ended_ms if terminal else None
    return {
        "status": status,
        "shape": "legacy" if sim.legacy else "current",
        "created": created,
        "started": started,
        "ended": ended,
        "error": sim.error if status == "FAILED" else None,
        "models": set(sim.models),
    }


def stored_fields(tracker: Tracker) -> dict[str, dict[str, Any]]:
    with tracker.read() as conn:
        models: dict[str, set[str]] = defaultdict(set)
        for job_id, model in conn.execute(select(job_configs.c.job_id, job_configs.c.model)):
            models[job_id].add(model)
        return {
            row.job_id: {
                "status": row.status,
                "shape": row.response_shape,
                "created": ms(row.created_at),
                "started": ms(row.started_at),
                "ended": ms(row.ended_at),
                "error": row.error_message,
                "models": models[row.job_id],
            }
            for row in conn.execute(select(jobs))
        }


def assert_matches_sandbox(tracker: Tracker, sb: Sandbox, job_ids: Any = None) -> None:
    stored = stored_fields(tracker)
    for job_id in sb.jobs if job_ids is None else job_ids:
        assert stored.get(job_id) == expected_fields(sb, job_id), job_id


def assert_history_never_goes_back(tracker: Tracker) -> None:
    with tracker.read() as conn:
        history: dict[str, list[Any]] = defaultdict(list)
        for row in conn.execute(select(job_status_history).order_by(job_status_history.c.id)):
            history[row.job_id].append(row)
        current = {
            job_id: status for job_id, status in conn.execute(select(jobs.c.job_id, jobs.c.status))
        }
    assert set(history) == set(current)
    for job_id, rows in history.items():
        assert rows[0].from_status is None, job_id
        ranks = [JobStatus(r.to_status).rank for r in rows]
        assert ranks == sorted(ranks), (job_id, [r.to_status for r in rows])
        for before, after in itertools.pairwise(rows):
            assert after.from_status == before.to_status, job_id
            assert after.to_status != before.to_status, job_id
        assert rows[-1].to_status == current[job_id]


def assert_key_never_sent_to_storage(sb: Sandbox) -> None:
    for record in sb.requests:
        if record.role == "storage":
            assert "x-hume-api-key" not in {h.lower() for h in record.headers}
            assert KEY not in " ".join(record.headers.values())


def run_rows(tracker: Tracker) -> list[dict[str, Any]]:
    return tracker.runs(limit=100)


def lease_rows(tracker: Tracker) -> list[Any]:
    with tracker.read() as conn:
        return list(conn.execute(select(leases_table)))


# --- acceptance -----------------------------------------------------------------------------


def poll_until_done(
    tracker: Tracker,
    sb: Sandbox,
    client: BatchClient,
    *,
    rounds: int,
    advance_s: float,
    late_jobs: Callable[[int], None] | None = None,
) -> int:
    """Poll and advance the sandbox clock until every sandbox job is stored and finished."""
    for number in range(1, rounds + 1):
        if late_jobs is not None:
            late_jobs(number)
        summary = tracker.poll(client, PollOptions(concurrency=8))
        assert summary.outcome == "ok", summary
        assert summary.error is None
        everything_ended = all(j.is_terminal_at(now_ms(sb)) for j in sb.jobs.values())
        if everything_ended and summary.unfinished == 0 and job_count(tracker) == len(sb.jobs):
            return number
        sb.clock.advance(advance_s)
    pytest.fail(f"jobs still unfinished after {rounds} polls")


def run_acceptance(tracker: Tracker, sb: Sandbox, current: int, legacy: int) -> None:
    # Created over the last 50 minutes (beyond the discovery overlap window), finishing over
    # the next 20: most jobs end between polls and must be refreshed one way or another.
    schedule: dict[str, Any] = {"queue_s": (1, 300), "run_s": (5, 900), "fail_fraction": 0.15}
    first = (current * 3) // 4
    sb.add_jobs(first, spread_s=3000, **schedule)
    legacy_ids = sb.add_jobs(legacy, legacy_fraction=1.0, spread_s=3000, **schedule)
    assert all(sb.jobs[i].legacy for i in legacy_ids)
    assert tracker.track(legacy_ids, note="legacy") == legacy

    def late_jobs(number: int) -> None:
        if number == 3:  # new jobs appear while the poller is at work
            sb.add_jobs(current - first, spread_s=30, **schedule)

    with fast_client(sb) as client:
        rounds = poll_until_done(tracker, sb, client, rounds=40, advance_s=60, late_jobs=late_jobs)
    assert rounds > 3

    assert len(sb.jobs) == current + legacy
    with tracker.read() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == len(sb.jobs)
        assert set(conn.execute(select(jobs.c.job_id)).scalars()) == set(sb.jobs)
        kinds = {
            job_id: count
            for job_id, count in conn.execute(
                select(downloads.c.job_id, func.count()).group_by(downloads.c.job_id)
            )
        }
    assert_matches_sandbox(tracker, sb)
    assert_history_never_goes_back(tracker)
    # Completed jobs have their result files on record: 3 signed URLs (legacy), else 2.
    expected_kinds = {
        job_id: 3 if sim.legacy else 2
        for job_id, sim in sb.jobs.items()
        if sim.final_status == "COMPLETED"
    }
    assert kinds == expected_kinds
    # About 5% of some 400 requests were broken (which ones depends on thread timing).
    assert sum(1 for r in sb.requests if r.fault) >= 5
    assert_key_never_sent_to_storage(sb)
    assert lease_rows(tracker) == []
    assert all(run["outcome"] == "ok" for run in run_rows(tracker))


@pytest.mark.slow
def test_acceptance_2000_jobs_with_faults(db_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=2024, faults=FaultConfig(rate=0.05)) as sb:
        tracker = make_tracker(db_url, sb)
        run_acceptance(tracker, sb, current=2000, legacy=50)


def test_stale_answers_never_move_a_status_back(sqlite_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=31, faults=FaultConfig(rate=0.5, kinds=("stale",))) as sb:
        tracker = make_tracker(sqlite_url, sb)
        sb.add_jobs(40, queue_s=(1, 60), run_s=(5, 120))
        legacy_ids = sb.add_jobs(10, legacy_fraction=1.0, queue_s=(1, 60), run_s=(5, 120))
        tracker.track(legacy_ids)
        with fast_client(sb) as client:
            poll_until_done(tracker, sb, client, rounds=30, advance_s=20)
        stale = [r for r in sb.requests if r.fault == "stale"]
        assert len(stale) >= 5
        assert_matches_sandbox(tracker, sb)
        assert_history_never_goes_back(tracker)


# --- requests per run -----------------------------------------------------------------------


def test_requests_per_run_follow_the_changes_not_the_jobs(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=41) as sb:
        tracker = make_tracker(sqlite_url, sb)
        # 400 jobs created over the last 50 minutes, each queued for 1-100 minutes, then done
        # within seconds: advancing the clock finishes exactly the jobs whose queue time ran out.
        ids = sb.add_jobs(400, spread_s=3000, queue_s=(3100, 9000), run_s=(1, 10))
        with fast_client(sb) as client:
            first = tracker.poll(client)
            assert first.outcome == "ok"
            assert first.jobs_new == 400
            assert first.unfinished == 400
            # Move the clock so that about 10% of the jobs finish.
            ends = sorted(sb.jobs[i].ended_ms for i in ids)
            sb.clock.advance((ends[40] - now_ms(sb)) / 1000 + 0.001)
            changed = [i for i in ids if sb.jobs[i].is_terminal_at(now_ms(sb))]
            assert 35 <= len(changed) <= 45
            sb.clear_log()
            second = tracker.poll(client)
        assert second.outcome == "ok"
        assert second.requests == sb.request_count()
        assert second.requests <= 0.2 * len(ids)
        assert second.jobs_changed == len(changed)
        assert second.unfinished == len(ids) - len(changed)
        assert_matches_sandbox(tracker, sb)
        # Only jobs that finished were fetched one by one.
        fetched = {r.path.rsplit("/", 1)[1] for r in detail_requests(sb)}
        assert fetched <= set(changed)


# --- discovery ------------------------------------------------------------------------------


def expected_pages(sb: Sandbox, page_size: int) -> set[str]:
    """Job ids the sandbox answered in the list requests it logged (created_after, asc)."""
    order = sorted(
        (j for j in sb.jobs.values() if not j.legacy), key=lambda j: j.created_ms
    )  # stable: ties keep insertion order, as the sandbox's index does
    answered: set[str] = set()
    for record in list_requests(sb):
        if record.status != 200:
            continue
        assert record.query["when"] == ["created_after"]
        after = int(record.query["timestamp_ms"][0])
        page = [j.job_id for j in order if j.created_ms > after][:page_size]
        answered.update(page)
    return answered


def test_discovery_pages_through_jobs_sharing_a_millisecond(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=51) as sb:
        tracker = make_tracker(sqlite_url, sb)
        now = sb.now()
        # 5 jobs, then 8 sharing one millisecond across the boundary of page 1 (size 10), then 7.
        ids = sb.add_jobs(5, created_at=now - 30, queue_s=LONG_QUEUE)
        ids += sb.add_jobs(8, created_at=now - 20, same_ms=True, queue_s=LONG_QUEUE)
        ids += sb.add_jobs(7, created_at=now - 10, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(page_size=10))
        assert summary.outcome == "ok"
        assert stored_ids(tracker) == set(ids)
        assert summary.jobs_new == 20
        assert_matches_sandbox(tracker, sb)
        with tracker.read() as conn:
            cursor = conn.execute(
                select(tracker_state.c.value).where(tracker_state.c.key == CURSOR_KEY)
            ).scalar_one()
        assert int(cursor) == max(sb.jobs[i].created_ms for i in ids)


def test_second_discovery_with_nothing_new_is_one_or_two_list_requests(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=52) as sb:
        tracker = make_tracker(sqlite_url, sb)
        # Finished jobs created over the hour before: only the newest few are in the overlap.
        ids = sb.add_jobs(45, created_at=sb.now() - 3600, spread_s=3000, run_s=(1, 5))
        options = PollOptions(page_size=10)
        with fast_client(sb) as client:
            first = tracker.poll(client, options)
            assert first.jobs_new == 45
            assert len(list_requests(sb)) >= 5  # 45 jobs in pages of 10
            sb.clear_log()
            sb.clock.advance(60)
            second = tracker.poll(client, options)
            assert second.outcome == "ok"
            assert second.jobs_new == second.jobs_changed == 0
            assert 1 <= len(list_requests(sb)) <= 2
            assert detail_requests(sb) == []
            # A job created now is found by the next run.
            sb.clear_log()
            new = sb.add_job(queue_s=1, run_s=1)
            third = tracker.poll(client, options)
        assert third.jobs_new == 1
        assert 1 <= len(list_requests(sb)) <= 2
        assert stored_ids(tracker) == {*ids, new}


def test_discovery_overlap_catches_a_job_listed_late(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=53) as sb:
        tracker = make_tracker(sqlite_url, sb)
        sb.add_jobs(5, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            tracker.poll(client)
            # A job that shows up in the list only now, created a minute before the newest
            # job already seen (clock skew between API nodes, slow indexing).
            late = sb.add_job(created_at=sb.now() - 60, queue_s=1000)
            summary = tracker.poll(client)
        assert summary.jobs_new == 1
        assert late in stored_ids(tracker)


def test_no_discover_refreshes_known_jobs_only(sqlite_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=54) as sb:
        tracker = make_tracker(sqlite_url, sb)
        known = sb.add_jobs(6, queue_s=(10, 20), run_s=(10, 20))
        with fast_client(sb) as client:
            tracker.poll(client)
            legacy = sb.add_job(legacy=True, queue_s=5, run_s=5)
            tracker.track([legacy])
            untracked = sb.add_jobs(5, queue_s=(10, 20), run_s=(10, 20))
            sb.clock.advance(60)
            sb.clear_log()
            summary = tracker.poll(client, PollOptions(discover=False))
        assert summary.outcome == "ok"
        assert list_requests(sb) == []  # the few due jobs are fetched one by one
        assert stored_ids(tracker) == {*known, legacy}
        assert not set(untracked) & stored_ids(tracker)
        assert_matches_sandbox(tracker, sb, [*known, legacy])
        assert summary.unfinished == 0


def test_no_discover_with_many_due_jobs_lists_them(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=55) as sb:
        tracker = make_tracker(sqlite_url, sb)
        known = sb.add_jobs(30, queue_s=(10, 20), run_s=(1000, 2000))
        with fast_client(sb) as client:
            tracker.poll(client, PollOptions(page_size=10))
            # Untracked jobs that are finished (so the unfinished list does not show them).
            untracked = sb.add_jobs(8, created_at=sb.now() - 500, run_s=(1, 5))
            sb.clock.advance(60)  # every known job is IN_PROGRESS now
            sb.clear_log()
            summary = tracker.poll(client, PollOptions(discover=False, page_size=10))
        assert summary.outcome == "ok"
        assert summary.jobs_changed == 30
        lists = list_requests(sb)
        # The finished listing (nothing), one page of recent starts (full, and newer than the
        # last run: more may have started), then the running jobs by creation time.
        assert 4 <= len(lists) <= 8
        assert lists[1].query["sort_by"] == ["started"]
        assert all(r.query["status"] == ["IN_PROGRESS"] for r in lists[1:])
        assert detail_requests(sb) == []
        assert stored_ids(tracker) == set(known)
        assert not set(untracked) & stored_ids(tracker)
        assert_matches_sandbox(tracker, sb, known)


def test_no_discover_listing_skips_untracked_pages_quickly(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=56) as sb:
        tracker = make_tracker(sqlite_url, sb)
        known = sb.add_jobs(25, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            tracker.poll(client, PollOptions(page_size=10))
            sb.clock.advance(60)
            # 30 unfinished jobs nobody tracks, created over the last minute.
            sb.add_jobs(30, spread_s=50, queue_s=LONG_QUEUE)
            sb.clear_log()
            summary = tracker.poll(
                client, PollOptions(discover=False, page_size=10, max_duration=2)
            )
        assert stored_ids(tracker) == set(known)
        # 25 known + 30 unknown unfinished jobs in pages of 10: a handful of pages. (Paging
        # from the filtered results once moved 1 ms per request: thousands of requests.)
        assert summary.outcome == "ok"
        assert len(list_requests(sb)) <= 10


def test_jobs_seen_counts_each_job_once(sqlite_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=57) as sb:
        tracker = make_tracker(sqlite_url, sb)
        sb.add_jobs(25, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(page_size=10))
        assert summary.jobs_new == 25
        assert summary.jobs_seen == 25


def test_more_jobs_in_one_millisecond_than_a_page_are_not_lost_silently(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=58) as sb:
        tracker = make_tracker(sqlite_url, sb)
        ids = sb.add_jobs(15, same_ms=True, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            summaries = [tracker.poll(client, PollOptions(page_size=10)) for _ in range(2)]
        # Either every job is found, or the run does not claim that all went well.
        assert stored_ids(tracker) == set(ids) or all(s.outcome != "ok" for s in summaries)


# --- 404, auth ------------------------------------------------------------------------------


def test_unknown_tracked_job_is_marked_not_found_and_not_asked_again(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=61) as sb:
        tracker = make_tracker(db_url, sb)
        real = sb.add_job(legacy=True, queue_s=1, run_s=1)
        tracker.track(["ghost-job", real])
        with fast_client(sb) as client:
            first = tracker.poll(client)
            assert first.not_found == 1
            assert first.outcome == "ok"
            ghost_path = JOBS_PATH + "/ghost-job"
            assert [r.status for r in sb.requests if r.path == ghost_path] == [404]
            with tracker.read() as conn:
                rows = {r.job_id: r.not_found_at for r in conn.execute(select(tracked_jobs))}
            assert rows["ghost-job"] == tracker.clock()
            assert rows[real] is None
            sb.clock.advance(60)
            second = tracker.poll(client)
        assert second.not_found == 0
        assert [r.status for r in sb.requests if r.path == ghost_path] == [404]
        assert stored_ids(tracker) == {real}


def test_wrong_key_raises_auth_error_and_records_a_failed_run(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=62) as sb:
        tracker = make_tracker(db_url, sb)
        sb.add_jobs(3)
        with fast_client(sb, key="wrong-key") as client, pytest.raises(AuthError):
            tracker.poll(client)
        assert sb.request_count() == 1  # never retried
        (run,) = run_rows(tracker)
        assert run["outcome"] == "failed"
        assert "Invalid ApiKey" in run["error"]
        assert "wrong-key" not in run["error"]
        assert run["finished_at"] is not None
        assert lease_rows(tracker) == []  # the next run is not locked out
        assert job_count(tracker) == 0
        with fast_client(sb) as client:
            assert tracker.poll(client).outcome == "ok"
        assert job_count(tracker) == 3


def test_auth_error_while_fetching_tracked_jobs_propagates(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=63) as sb:
        tracker = make_tracker(sqlite_url, sb)
        tracker.track([sb.add_job(legacy=True) for _ in range(3)])
        with fast_client(sb, key="wrong-key") as client, pytest.raises(AuthError):
            tracker.poll(client, PollOptions(discover=False))
        assert run_rows(tracker)[0]["outcome"] == "failed"
        assert lease_rows(tracker) == []


# --- stopping early -------------------------------------------------------------------------


def stop_after(sb: Sandbox, requests: int, stop: threading.Event) -> threading.Thread:
    """Set ``stop`` once the sandbox has answered ``requests`` requests (bounded wait)."""

    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sb.request_count() < requests:
            time.sleep(0.002)
        stop.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_stop_before_polling_is_interrupted_at_once(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=71) as sb:
        tracker = make_tracker(sqlite_url, sb)
        sb.add_jobs(10)
        stop = threading.Event()
        stop.set()
        with fast_client(sb) as client:
            summary = tracker.poll(client, stop=stop)
        assert summary.outcome == "interrupted"
        assert sb.request_count() == 0
        assert job_count(tracker) == 0
        assert run_rows(tracker)[0]["outcome"] == "interrupted"
        assert lease_rows(tracker) == []


def test_stop_before_fetching_sends_no_request(sqlite_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=70) as sb:
        tracker = make_tracker(sqlite_url, sb)
        tracker.track(sb.add_jobs(30, legacy_fraction=1.0))
        stop = threading.Event()
        stop.set()
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(discover=False), stop)
        assert summary.outcome == "interrupted"
        assert job_count(tracker) == 0
        assert sb.request_count() == 0


def test_stop_during_discovery_keeps_every_page_fetched(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=72, faults=FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.1)) as sb:
        tracker = make_tracker(db_url, sb)
        ids = sb.add_jobs(100, queue_s=LONG_QUEUE)
        stop = threading.Event()
        watcher = stop_after(sb, 3, stop)
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(page_size=10), stop)
            watcher.join(timeout=5)
            stored = stored_ids(tracker)
            assert summary.outcome == "interrupted"
            assert run_rows(tracker)[0]["outcome"] == "interrupted"
            assert 10 <= len(stored) < 100
            # Every page the sandbox answered was committed, cursor included.
            assert stored == expected_pages(sb, 10)
            with tracker.read() as conn:
                cursor = conn.execute(
                    select(tracker_state.c.value).where(tracker_state.c.key == CURSOR_KEY)
                ).scalar_one()
            assert int(cursor) == max(sb.jobs[i].created_ms for i in stored)
            assert_matches_sandbox(tracker, sb, stored)
            # The next run picks up where this one stopped.
            sb.faults = None
            assert tracker.poll(client, PollOptions(page_size=10)).outcome == "ok"
        assert stored_ids(tracker) == set(ids)


def test_stop_while_fetching_keeps_what_arrived(sqlite_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=73, faults=FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.1)) as sb:
        tracker = make_tracker(sqlite_url, sb)
        legacy = sb.add_jobs(40, legacy_fraction=1.0, created_at=sb.now() - 600, run_s=(1, 5))
        tracker.track(legacy)
        stop = threading.Event()
        watcher = stop_after(sb, 4, stop)
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(discover=False, concurrency=2), stop)
        watcher.join(timeout=5)
        assert summary.outcome == "interrupted"
        stored = stored_ids(tracker)
        answered = {r.path.rsplit("/", 1)[1] for r in detail_requests(sb) if r.status == 200}
        assert 1 <= len(stored) <= len(answered) < 40
        assert stored <= answered
        assert_matches_sandbox(tracker, sb, stored)


def test_max_duration_ends_the_run_with_time_limit(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=74, faults=FaultConfig(rate=1.0, kinds=("slow",), slow_s=0.1)) as sb:
        tracker = make_tracker(sqlite_url, sb)
        ids = sb.add_jobs(60, queue_s=LONG_QUEUE)
        with fast_client(sb) as client:
            summary = tracker.poll(client, PollOptions(page_size=10, max_duration=0.15))
        assert summary.outcome == "time_limit"
        assert summary.duration_s < 2
        assert run_rows(tracker)[0]["outcome"] == "time_limit"
        stored = stored_ids(tracker)
        assert 10 <= len(stored) < len(ids)
        assert stored == expected_pages(sb, 10)


# --- leases ---------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait(timeout=10)
    return proc.pid


def insert_lease(tracker: Tracker, holder: str, expires_in: timedelta) -> None:
    now = tracker.clock()
    with tracker.write() as conn:
        conn.execute(
            leases_table.insert().values(
                name=LEASE_NAME, holder=holder, acquired_at=now, expires_at=now + expires_in
            )
        )


def test_lease_is_exclusive_until_it_expires(db_url: str, make_tracker: MakeTracker) -> None:
    with Sandbox(seed=81) as sb:
        tracker = make_tracker(db_url, sb)
        a, b = "host-a:101:aaaa", "host-b:202:bbbb"
        ttl = timedelta(minutes=10)
        start = tracker.clock()
        with tracker.write() as conn:
            leases.acquire(conn, "poll", a, now=start, ttl=ttl)
        with tracker.write() as conn, pytest.raises(LockHeld) as info:
            leases.acquire(conn, "poll", b, now=start + timedelta(minutes=9), ttl=ttl)
        assert info.value.holder == a
        assert a in str(info.value)
        assert info.value.exit_code == 75
        # A holder may take its own lease again (renewing it).
        with tracker.write() as conn:
            leases.acquire(conn, "poll", a, now=start + timedelta(minutes=1), ttl=ttl)
            leases.renew(conn, "poll", a, now=start + timedelta(minutes=2), ttl=ttl)
        # Renewed at +2 min: still held at +11 min, free after +12 min.
        with tracker.write() as conn, pytest.raises(LockHeld):
            leases.acquire(conn, "poll", b, now=start + timedelta(minutes=11), ttl=ttl)
        with tracker.write() as conn:
            leases.acquire(conn, "poll", b, now=start + timedelta(minutes=12, seconds=1), ttl=ttl)
        assert [r.holder for r in lease_rows(tracker)] == [b]
        # A lost its lease: renewing says so, releasing leaves B's lease alone.
        with tracker.write() as conn, pytest.raises(LockHeld, match="lost"):
            leases.renew(conn, "poll", a, now=start + timedelta(minutes=13), ttl=ttl)
        with tracker.write() as conn:
            leases.release(conn, "poll", a)
        assert [r.holder for r in lease_rows(tracker)] == [b]
        with tracker.write() as conn:
            leases.release(conn, "poll", b)
        assert lease_rows(tracker) == []
        # Leases are per name.
        with tracker.write() as conn:
            leases.acquire(conn, "poll", a, now=start, ttl=ttl)
            leases.acquire(conn, "download", b, now=start, ttl=ttl)
        assert {r.name: r.holder for r in lease_rows(tracker)} == {"poll": a, "download": b}


def test_lease_of_a_dead_local_process_is_taken_over_at_once(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=82) as sb:
        tracker = make_tracker(db_url, sb)
        host = socket.gethostname()
        live = subprocess.Popen(["sleep", "30"])
        try:
            alive = f"{host}:{live.pid}:11111111"
            insert_lease(tracker, alive, timedelta(hours=1))
            with tracker.write() as conn, pytest.raises(LockHeld) as info:
                leases.acquire(conn, LEASE_NAME, "me:1:x", now=tracker.clock(), ttl=timedelta(1))
            assert info.value.holder == alive
        finally:
            live.kill()
            live.wait(timeout=10)
        # The same holder, its process now gone: taken over without waiting for the expiry.
        with tracker.write() as conn:
            leases.acquire(conn, LEASE_NAME, "me:1:x", now=tracker.clock(), ttl=timedelta(1))
        assert [r.holder for r in lease_rows(tracker)] == ["me:1:x"]
        with tracker.write() as conn:
            conn.execute(leases_table.delete())
        insert_lease(tracker, f"{host}:{dead_pid()}:22222222", timedelta(hours=1))
        sb.add_jobs(3)
        with fast_client(sb) as client:
            assert tracker.poll(client).outcome == "ok"
        assert job_count(tracker) == 3
        assert lease_rows(tracker) == []


def test_poll_refuses_while_a_live_process_holds_the_lease(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=83) as sb:
        tracker = make_tracker(db_url, sb)
        sb.add_jobs(3)
        # The parent of this process is alive; a holder on another host is judged by expiry.
        for holder in (f"{socket.gethostname()}:{os.getppid()}:33333333", "elsewhere:1:4444"):
            with tracker.write() as conn:
                conn.execute(leases_table.delete())
            insert_lease(tracker, holder, timedelta(minutes=5))
            with fast_client(sb) as client, pytest.raises(LockHeld) as info:
                tracker.poll(client)
            assert info.value.holder == holder
            assert holder in str(info.value)
        assert sb.request_count() == 0
        assert run_rows(tracker) == []
        # Once the lease expires (the tracker's clock follows the sandbox's), polls run again.
        sb.clock.advance(301)
        with fast_client(sb) as client:
            assert tracker.poll(client).outcome == "ok"


@pytest.mark.parametrize(
    "holder", ["no-colons", "host:notapid:x", f"{socket.gethostname()}:{os.getpid()}:me", ""]
)
def test_holder_is_dead_is_conservative(holder: str) -> None:
    assert leases.holder_is_dead(holder) is False


def test_holder_is_dead_for_a_reaped_local_pid() -> None:
    assert leases.holder_is_dead(f"{socket.gethostname()}:{dead_pid()}:abc") is True
    assert leases.holder_is_dead(f"other-host-name:{dead_pid()}:abc") is False


# --- scheduling, stale jobs, failures -------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "failures", "delay"),
    [
        (timedelta(0), 0, timedelta(0)),
        (timedelta(minutes=59), 0, timedelta(0)),
        (timedelta(hours=1), 0, timedelta(minutes=2)),
        (timedelta(hours=5, minutes=59), 0, timedelta(minutes=2)),
        (timedelta(hours=6), 0, timedelta(minutes=10)),
        (timedelta(days=1), 0, timedelta(hours=1)),
        (timedelta(days=6, hours=23), 0, timedelta(hours=1)),
        (timedelta(days=7), 0, timedelta(hours=6)),
        (timedelta(days=400), 0, timedelta(hours=6)),
        (timedelta(0), 1, timedelta(minutes=2)),
        (timedelta(0), 3, timedelta(minutes=8)),
        (timedelta(0), 8, timedelta(minutes=256)),
        (timedelta(0), 9, timedelta(hours=6)),
        (timedelta(0), 50, timedelta(hours=6)),
        (timedelta(days=2), 1, timedelta(hours=1)),
        (timedelta(days=2), 7, timedelta(minutes=128)),
    ],
)
def test_next_poll_delay_schedule(age: timedelta, failures: int, delay: timedelta) -> None:
    assert next_poll_delay(age, failures) == delay


def test_old_unfinished_jobs_are_polled_less_often_and_counted_stale(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=91) as sb:
        tracker = make_tracker(db_url, sb)
        now = sb.now()
        old = sb.add_jobs(4, created_at=now - 3 * 3600, queue_s=LONG_QUEUE)
        young = sb.add_jobs(3, created_at=now - 60, queue_s=LONG_QUEUE)
        options = PollOptions(stale_after=timedelta(hours=2))
        with fast_client(sb) as client:
            first = tracker.poll(client, options)
            assert first.unfinished == 7
            assert first.stale_jobs == 4
            with tracker.read() as conn:
                due = {r.job_id: r.next_poll_at for r in conn.execute(select(jobs))}
            current = tracker.clock()
            for job_id in old:  # three hours old: every 2 minutes
                assert due[job_id] == current + timedelta(minutes=2)
            for job_id in young:  # a minute old: every run
                assert due[job_id] == current
            sb.clock.advance(61)
            sb.clear_log()
            second = tracker.poll(
                client, PollOptions(discover=False, stale_after=timedelta(hours=2))
            )
            assert {r.path.rsplit("/", 1)[1] for r in detail_requests(sb)} == set(young)
            assert second.stale_jobs == 4
            sb.clock.advance(60)
            sb.clear_log()
            tracker.poll(client, PollOptions(discover=False, stale_after=timedelta(hours=2)))
            assert {r.path.rsplit("/", 1)[1] for r in detail_requests(sb)} == {*old, *young}
            # Past stale_after the young ones count too; finished jobs never do.
            sb.clock.advance(2 * 3600)
            third = tracker.poll(client, PollOptions(stale_after=timedelta(minutes=30)))
        assert third.unfinished == 7
        assert third.stale_jobs == 7


def set_job_faults(sb: Sandbox) -> None:
    sb.faults = FaultConfig(rate=1.0, kinds=("5xx",))


def failing_job_setup(tracker: Tracker, sb: Sandbox, client: BatchClient) -> str:
    job_id = sb.add_job(queue_s=10_000)
    assert tracker.poll(client).jobs_new == 1
    set_job_faults(sb)
    return job_id


def job_row(tracker: Tracker, job_id: str) -> Any:
    with tracker.read() as conn:
        return conn.execute(select(jobs).where(jobs.c.job_id == job_id)).one()


FAILING = RetryPolicy(max_attempts=2, base_s=0.01, floor_s=0.01, budget_s=5)


def test_a_job_that_cannot_be_fetched_is_recorded_and_retried_later(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=92) as sb:
        tracker = make_tracker(db_url, sb)
        with fast_client(sb, retry=FAILING) as client:
            job_id = failing_job_setup(tracker, sb, client)
            options = PollOptions(discover=False)
            summary = tracker.poll(client, options)
            assert summary.outcome == "partial"
            assert summary.jobs_failed == 1
            assert job_id in summary.failures[0]
            row = job_row(tracker, job_id)
            assert row.poll_failures == 1
            assert "HTTP 5" in row.last_poll_error
            assert row.next_poll_at > tracker.clock()
            assert run_rows(tracker)[0]["outcome"] == "partial"
            assert run_rows(tracker)[0]["jobs_failed"] == 1
            # Not due yet: the next run leaves it alone.
            sb.clear_log()
            assert tracker.poll(client, options).jobs_failed == 0
            assert sb.request_count() == 0
            # Due again, and the API answers: the failure record is cleared.
            sb.faults = None
            sb.clock.advance((row.next_poll_at - tracker.clock()).total_seconds())
            assert tracker.poll(client, options).outcome == "ok"
        row = job_row(tracker, job_id)
        assert row.poll_failures == 0
        assert row.last_poll_error is None


def test_failing_job_backs_off_more_with_each_failure(
    sqlite_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=93) as sb:
        tracker = make_tracker(sqlite_url, sb)
        with fast_client(sb, retry=FAILING) as client:
            job_id = failing_job_setup(tracker, sb, client)
            delays = []
            for _ in range(4):
                tracker.poll(client, PollOptions(discover=False))
                row = job_row(tracker, job_id)
                delays.append(row.next_poll_at - tracker.clock())
                sb.clock.advance(delays[-1].total_seconds())
        assert job_row(tracker, job_id).poll_failures == 4
        assert delays == [next_poll_delay(timedelta(0), n) for n in (1, 2, 3, 4)]


# --- run records ----------------------------------------------------------------------------


def test_runs_lists_every_run_newest_first_with_counts(
    db_url: str, make_tracker: MakeTracker
) -> None:
    with Sandbox(seed=95) as sb:
        tracker = make_tracker(db_url, sb)
        sb.add_jobs(12, queue_s=(10, 20), run_s=(10, 20))
        summaries = []
        with fast_client(sb) as client:
            for _ in range(3):
                summaries.append(tracker.poll(client))
                sb.clock.advance(30)
        rows = tracker.runs()
        assert [r["id"] for r in rows] == [s.run_id for s in reversed(summaries)]
        for row, summary in zip(rows, reversed(summaries), strict=True):
            assert row["command"] == "poll"
            assert row["outcome"] == summary.outcome == "ok"
            assert row["requests"] == summary.requests
            assert row["jobs_seen"] == summary.jobs_seen
            assert row["jobs_changed"] == summary.jobs_new + summary.jobs_changed
            assert row["jobs_failed"] == 0
            assert row["host"] == socket.gethostname()
            assert row["pid"] == os.getpid()
            assert row["started_at"] <= row["finished_at"]
            assert row["error"] is None
        assert rows[-1]["jobs_changed"] == 12  # the first run stored every job
        assert sum(r["requests"] for r in rows) == sb.request_count()
        assert [r["id"] for r in tracker.runs(limit=1)] == [summaries[-1].run_id]
        assert tracker.runs(command="download") == []
        assert len(tracker.runs(command="poll")) == 3
        with tracker.read() as conn:
            assert conn.execute(select(func.count()).select_from(poll_runs)).scalar_one() == 3
