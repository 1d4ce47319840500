"""``jobtracker demo``: the whole job against the built-in sandbox, with no setup at all.

Starts the simulated batch API in-process on 127.0.0.1, creates a few dozen jobs (some in the
legacy shape, registered with ``track`` as the list endpoint never shows those), polls until
every job is terminal while showing progress, downloads the results, and prints the run-time
report. Result files go to the database's download directory (``results/`` beside the SQLite
file unless ``--dest`` was used before). The sandbox's clock is advanced between polls, so jobs
that "take minutes" finish in seconds; it starts in the recent past so that the recorded times
end near now. Only the CLI imports this module: the library never imports the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobtracker.client import BatchClient
from jobtracker.poll_types import PollOptions, PollSummary
from jobtracker.sandbox import ManualClock, Sandbox
from jobtracker.tracker import Tracker

#: Rounds of poll + clock advance before the demo gives up (bounded wait).
MAX_ROUNDS = 60
ROUND_ADVANCE_S = 20.0


@dataclass(slots=True)
class DemoResult:
    """What the demo did."""

    jobs: int
    rounds: int
    finished: int
    polls: list[PollSummary]
    downloaded: int
    download_dir: Path


def run_demo(
    tracker: Tracker,
    *,
    jobs: int = 30,
    legacy: int = 6,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
    download_dir: Path | None = None,
) -> DemoResult:
    """Run the demo on ``tracker``'s database (migrating it first); returns what happened."""
    tracker.upgrade()
    if seed is None:
        # New job ids every run: a second demo on the same database shows a whole lifecycle
        # again instead of finding its jobs already finished.
        seed = time.time_ns() % 2**31
    clock = ManualClock(time.time() - MAX_ROUNDS * ROUND_ADVANCE_S / 2)
    real_clock = tracker.clock
    # The tracker's clock follows the sandbox's, so job ages (and the poll backoff) make sense.
    tracker.clock = lambda: datetime.fromtimestamp(clock.now(), UTC)
    polls: list[PollSummary] = []
    try:
        with Sandbox(seed=seed, clock=clock) as sandbox:
            sandbox.add_jobs(
                jobs, fail_fraction=0.15, queue_s=(1, 60), run_s=(10, 300), spread_s=30
            )
            legacy_ids = sandbox.add_jobs(
                legacy, legacy_fraction=1.0, queue_s=(1, 30), run_s=(10, 200)
            )
            tracker.track(legacy_ids, note="demo: legacy jobs")
            echo(f"sandbox batch API on {sandbox.base_url}; {jobs + legacy} jobs submitted")
            total = jobs + legacy
            finished = 0
            rounds = 0
            with tracker.client(sandbox.base_url, "sandbox-key", max_rps=200) as client:
                for rounds in range(1, MAX_ROUNDS + 1):
                    summary = tracker.poll(client, PollOptions(concurrency=8))
                    polls.append(summary)
                    finished = total - summary.unfinished
                    echo(
                        f"poll {rounds:2d}: {finished:3d}/{total} finished, "
                        f"{summary.jobs_changed + summary.jobs_new:3d} changed, "
                        f"{summary.requests:3d} requests"
                    )
                    if summary.unfinished == 0 and summary.jobs_seen:
                        break
                    clock.advance(ROUND_ADVANCE_S)
                downloaded = _download(tracker, client, download_dir, echo)
    finally:
        tracker.clock = real_clock
    return DemoResult(total, rounds, finished, polls, downloaded, tracker.download_dir())


def _download(
    tracker: Tracker, client: BatchClient, download_dir: Path | None, echo: Callable[[str], None]
) -> int:
    summary = tracker.download(client, dest=download_dir, concurrency=4)
    echo(summary.line())
    for failure in summary.failures[:5]:
        echo(f"  failed: {failure}")
    return summary.files_done
