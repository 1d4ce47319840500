"""Poll benchmark: one ``jobtracker`` poll run beside the SDK's one-GET-per-job wait loop.

Run by hand (not a test); the figures go into the README::

    .venv/bin/python bench/poll.py                          # 10,000 tracked jobs, 10% changed
    .venv/bin/python bench/poll.py --jobs 2000 --sample 500
    .venv/bin/python bench/poll.py --profile bench/out/poll.prof

The scenario (sandbox on 127.0.0.1, no faults, a manual clock; by default the sandbox runs in a
child process so its HTTP server does not share this process's interpreter lock):

* ``--jobs`` current-shape jobs created over the ``--spread`` seconds before ``t0``, all
  unfinished at ``t0``: half queued for hours, half running for hours, and
  ``--changed-fraction`` of them scheduled to finish (COMPLETED, some FAILED) between ``t0`` and
  ``t1 = t0 + --interval``. The script checks the sandbox's own view: every job unfinished at
  ``t0`` and exactly the changed ones with another status at ``t1``.
* A tracker on a fresh SQLite file, clocked by the sandbox, polls once at ``t0`` (untimed), so
  every job is stored and unfinished; all were created less than an hour before ``t1``, so the
  poller's age backoff makes every one of them due again at ``t1``.
* At ``t1``, on the same sandbox state:

  1. the seed-style loop: one sequential ``GET /v0/batch/jobs/{id}`` per tracked job over one
     ``requests.Session``, each answer parsed with ``parse_response`` (what the SDK's wait loop
     plus ``BatchJobResult.from_response`` do), no database; ``--sample`` times an evenly spread
     subset and extrapolates linearly;
  2. one ``Tracker.poll`` run (``PollOptions(concurrency=...)``, the client's rate limit raised
     to ``--max-rps`` so the limiter does not dominate), timed end to end.

  The whole scenario is built afresh ``--repeat`` times (sandbox and database); the table shows
  the run with the median speed-up, the notes every run's values.

Targets: poll >= 20x faster than the seed-style loop; requests <= 0.2x the tracked jobs;
database time < 20% of the poll's wall time.

Database time is measured with SQLAlchemy engine events: ``before_cursor_execute`` /
``after_cursor_execute`` add up the time of every statement (``BEGIN IMMEDIATE`` included), and
the time from the end of each transaction's body to the end of ``Tracker.read()`` /
``Tracker.write()`` (the COMMIT plus returning the connection to the pool) is added as commit
time. Row fetching after the first step is not in that figure; the time spent inside
``Tracker.read()``/``write()`` blocks (SQL plus the store's Python work) is reported beside it as
an upper bound.

At the API's real limit (10 requests/s) a run takes at least requests / 10 seconds; that figure
is computed for both sides and reported for information.

Prints a table and writes it as JSON to ``bench/out/poll.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import random
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection as PipeEnd
from pathlib import Path
from typing import Any, Protocol

import requests
from common import SEED, Figure, freeze_gc, sqlite_url, workdir, write_report
from sqlalchemy import Connection, Engine, event, func, select

from jobtracker import Tracker, parse_response
from jobtracker.client import API_KEY_HEADER, DEFAULT_MAX_RPS
from jobtracker.poller import PollOptions, PollSummary
from jobtracker.sandbox import ManualClock, Sandbox
from jobtracker.sandbox.clock import epoch_for_seed, to_ms
from jobtracker.schema import jobs as jobs_table

SPEEDUP_TARGET = 20.0
REQUESTS_TARGET = 0.2  # x tracked jobs
DB_SHARE_TARGET = 0.2  # of the poll's wall time
_UNFINISHED = ("QUEUED", "IN_PROGRESS")
_FINAL = ("COMPLETED", "FAILED")
_LIST_PATH = "/v0/batch/jobs"


# --- the scenario -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the sandbox holds and when the two polls happen (sandbox epoch seconds)."""

    seed: int
    jobs: int
    changed: int
    t0: float
    spread_s: float
    interval_s: float

    @property
    def t1(self) -> float:
        return self.t0 + self.interval_s


def build_scenario(sb: Sandbox, sc: Scenario) -> dict[str, Any]:
    """Add the jobs to ``sb`` and check the sandbox's own view of them at ``t0`` and ``t1``."""
    rng = random.Random(sc.seed)
    steady = sc.jobs - sc.changed
    queued = steady // 2
    hours = (2 * 3600.0, 6 * 3600.0)
    # Queued for hours: created at most `spread` ago, none starts before t1.
    sb.add_jobs(queued, created_at=sc.t0, spread_s=sc.spread_s, queue_s=hours, run_s=(60, 1800))
    # Running for hours: at most 30 s in the queue and created >= 30 s before t0, so every one
    # has started by t0 (a QUEUED -> IN_PROGRESS move would be a change too).
    sb.add_jobs(
        steady - queued,
        created_at=sc.t0 - 30,
        spread_s=sc.spread_s - 30,
        queue_s=(1.0, 30.0),
        run_s=hours,
    )
    # The changed ones: created anywhere in the spread, ending between t0 and t1; some still
    # queued at t0, some running; one in ten fails.
    for _ in range(sc.changed):
        created = sc.t0 - rng.uniform(0.0, sc.spread_s)
        ended = sc.t0 + rng.uniform(1.0, sc.interval_s - 1.0)
        total = ended - created
        queue = total * rng.uniform(0.05, 0.6)
        status = "FAILED" if rng.random() < 0.1 else "COMPLETED"
        sb.add_job(created_at=created, queue_s=queue, run_s=total - queue, status=status)

    t0_ms, t1_ms = to_ms(sc.t0), to_ms(sc.t1)
    all_jobs = list(sb.jobs.values())
    at_t0 = Counter(j.status_at(t0_ms) for j in all_jobs)
    at_t1 = Counter(j.status_at(t1_ms) for j in all_jobs)
    moved = sum(j.status_at(t0_ms) != j.status_at(t1_ms) for j in all_jobs)
    finished = sum(j.is_terminal_at(t1_ms) for j in all_jobs)
    oldest_age_s = (t1_ms - min(j.created_ms for j in all_jobs)) / 1000
    problems = []
    if len(all_jobs) != sc.jobs or at_t0["COMPLETED"] + at_t0["FAILED"]:
        problems.append(f"expected {sc.jobs} unfinished jobs at t0, got {dict(at_t0)}")
    if moved != sc.changed or finished != sc.changed:
        problems.append(f"expected {sc.changed} changed at t1, got {moved} ({finished} finished)")
    if oldest_age_s >= 3600:
        problems.append(f"oldest job is {oldest_age_s:.0f}s old at t1; the poller would back off")
    if problems:
        raise RuntimeError("scenario is not what the benchmark needs: " + "; ".join(problems))
    return {
        "status_at_t0": dict(sorted(at_t0.items())),
        "status_at_t1": dict(sorted(at_t1.items())),
        "changed": moved,
        "oldest_age_at_t1_s": oldest_age_s,
    }


def _request_breakdown(sb: Sandbox) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for record in sb.requests:
        if record.role != "api":
            counts["storage"] += 1
        elif record.path.rstrip("/") == _LIST_PATH:
            counts["list"] += 1
        else:
            counts["detail"] += 1
        if record.status >= 400:
            counts["errors"] += 1
    return {"total": sum(v for k, v in counts.items() if k != "errors"), **counts}


# --- the sandbox, here or in a child process ---------------------------------------------------


class SandboxHandle(Protocol):
    """What the benchmark needs from a running sandbox."""

    base_url: str
    api_key: str
    check: dict[str, Any]

    def advance(self, seconds: float) -> float: ...

    def clear_log(self) -> None: ...

    def requests_seen(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class LocalSandbox:
    """The sandbox in this process (its server threads share this interpreter's lock)."""

    def __init__(self, sc: Scenario) -> None:
        self._sb = Sandbox(seed=sc.seed, clock=ManualClock(sc.t0))
        self.check = build_scenario(self._sb, sc)
        self._sb.start()
        self.base_url = self._sb.base_url
        self.api_key = self._sb.api_key

    def advance(self, seconds: float) -> float:
        return self._sb.clock.advance(seconds)

    def clear_log(self) -> None:
        self._sb.clear_log()

    def requests_seen(self) -> dict[str, int]:
        return _request_breakdown(self._sb)

    def close(self) -> None:
        self._sb.stop()


def _sandbox_child(pipe: PipeEnd, sc: Scenario) -> None:
    """Body of the sandbox process: build, serve, and answer commands until told to stop."""
    try:
        sb = Sandbox(seed=sc.seed, clock=ManualClock(sc.t0))
        check = build_scenario(sb, sc)
        sb.start()
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        pipe.send(("error", traceback.format_exc()))
        return
    pipe.send(("ok", {"base_url": sb.base_url, "api_key": sb.api_key, "check": check}))
    try:
        while True:
            command, arg = pipe.recv()
            if command == "advance":
                pipe.send(("ok", sb.clock.advance(arg)))
            elif command == "clear":
                sb.clear_log()
                pipe.send(("ok", None))
            elif command == "requests":
                pipe.send(("ok", _request_breakdown(sb)))
            else:
                pipe.send(("ok", None))
                return
    except EOFError:
        return  # the parent went away
    finally:
        sb.stop()


class ChildSandbox:
    """The sandbox in a child process, driven over a pipe (like a remote API, on loopback)."""

    def __init__(self, sc: Scenario) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child_end = ctx.Pipe()
        self._proc = ctx.Process(
            target=_sandbox_child, args=(child_end, sc), name="sandbox", daemon=True
        )
        self._proc.start()
        child_end.close()
        info = self._call(None, None)
        self.base_url = str(info["base_url"])
        self.api_key = str(info["api_key"])
        self.check: dict[str, Any] = info["check"]

    def _call(self, command: str | None, arg: Any) -> Any:
        if command is not None:
            self._pipe.send((command, arg))
        if not self._pipe.poll(300):
            raise RuntimeError(f"sandbox process did not answer {command or 'start'!r}")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"sandbox process failed:\n{value}")
        return value

    def advance(self, seconds: float) -> float:
        return float(self._call("advance", seconds))

    def clear_log(self) -> None:
        self._call("clear", None)

    def requests_seen(self) -> dict[str, int]:
        seen: dict[str, int] = self._call("requests", None)
        return seen

    def close(self) -> None:
        if self._proc.is_alive():
            with suppress(RuntimeError, OSError, EOFError):
                self._call("stop", None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._pipe.close()


# --- database time ------------------------------------------------------------------------------


@dataclass(slots=True)
class DbTime:
    """Seconds the database took, accumulated over a measured period."""

    statements: int = 0
    execute_s: float = 0.0
    transactions: int = 0
    commit_s: float = 0.0
    inside_transactions_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Statement execution plus commits: the database time the target is judged on."""
        return self.execute_s + self.commit_s


class TimedTracker(Tracker):
    """A :class:`Tracker` that measures the time its engine and transactions take.

    Statements are timed by the engine's cursor events; each ``read()``/``write()`` is timed as
    a whole, and the part after its body (COMMIT, connection back to the pool) as commit time.
    """

    def __init__(self, db_url: str, *, clock: Any) -> None:
        super().__init__(db_url, clock=clock)
        self.db_time = DbTime()
        self.measuring = False
        self._lock = threading.Lock()
        self._local = threading.local()
        _listen(self.engine, self)

    def reset(self) -> None:
        with self._lock:
            self.db_time = DbTime()

    def statement_started(self) -> None:
        self._local.started = time.perf_counter()

    def statement_done(self) -> None:
        elapsed = time.perf_counter() - self._local.started
        if self.measuring:
            with self._lock:
                self.db_time.statements += 1
                self.db_time.execute_s += elapsed

    def _transaction(self, started: float, body_done: float | None) -> None:
        if not self.measuring:
            return
        ended = time.perf_counter()
        with self._lock:
            self.db_time.transactions += 1
            self.db_time.inside_transactions_s += ended - started
            if body_done is not None:
                self.db_time.commit_s += ended - body_done

    @contextmanager
    def read(self) -> Iterator[Connection]:
        started, body_done = time.perf_counter(), None
        try:
            with super().read() as conn:
                yield conn
                body_done = time.perf_counter()
        finally:
            self._transaction(started, body_done)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        started, body_done = time.perf_counter(), None
        try:
            with super().write() as conn:
                yield conn
                body_done = time.perf_counter()
        finally:
            self._transaction(started, body_done)


def _listen(engine: Engine, tracker: TimedTracker) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _before(*_: Any) -> None:
        tracker.statement_started()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(*_: Any) -> None:
        tracker.statement_done()


# --- the two contenders -------------------------------------------------------------------------


@dataclass(slots=True)
class SeedLoop:
    """The seed-style loop's timing (over ``timed`` jobs, extrapolated to ``tracked``)."""

    tracked: int
    timed: int
    seconds: float
    requests: int
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def extrapolated_s(self) -> float:
        return self.seconds * self.tracked / self.timed

    @property
    def per_request_ms(self) -> float:
        return self.seconds / self.timed * 1000


def seed_loop(base_url: str, api_key: str, ids: Sequence[str], tracked: int) -> SeedLoop:
    """One sequential GET per job over one session, each answer parsed; no database."""
    statuses: Counter[str] = Counter()
    headers = {API_KEY_HEADER: api_key}
    with requests.Session() as session:
        freeze_gc()
        started = time.perf_counter()
        for job_id in ids:
            response = session.get(f"{base_url}/v0/batch/jobs/{job_id}", headers=headers)
            response.raise_for_status()
            statuses[parse_response(response.json(), job_id).status.value] += 1
        seconds = time.perf_counter() - started
    return SeedLoop(tracked, len(ids), seconds, len(ids), dict(sorted(statuses.items())))


@dataclass(slots=True)
class PollRun:
    """The timed poll run."""

    wall_s: float
    requests: int
    summary: PollSummary
    db: DbTime
    profile: str | None = None


def timed_poll(
    tracker: TimedTracker, client_args: dict[str, Any], options: PollOptions, profile: Path | None
) -> PollRun:
    with tracker.client(**client_args) as client:
        before = client.requests_made
        tracker.reset()
        profiler = cProfile.Profile() if profile is not None else None
        freeze_gc()
        tracker.measuring = True
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            summary = tracker.poll(client, options)
        finally:
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - started
            tracker.measuring = False
        made = client.requests_made - before
    top = None
    if profiler is not None and profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        top = out.getvalue()
    return PollRun(wall, made, summary, tracker.db_time, top)


def stored_statuses(tracker: Tracker) -> dict[str, int]:
    with tracker.read() as conn:
        rows = conn.execute(select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status))
        return {str(status): int(count) for status, count in rows}


def unfinished_ids(tracker: Tracker) -> list[str]:
    with tracker.read() as conn:
        return list(
            conn.execute(
                select(jobs_table.c.job_id)
                .where(jobs_table.c.status.in_(_UNFINISHED))
                .order_by(jobs_table.c.created_at)
            ).scalars()
        )


def spread_sample(ids: Sequence[str], size: int | None) -> list[str]:
    """``size`` ids spread evenly over ``ids`` (all of them without a size)."""
    if size is None or size >= len(ids):
        return list(ids)
    step = len(ids) / size
    return [ids[int(i * step)] for i in range(size)]


# --- report -------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("x", "s"):
        return f"{value:,.2f} {unit}"
    if unit == "ms":
        return f"{value:,.2f} ms"
    return f"{value:,.0f} {unit}".rstrip()


def render(figures: list[Figure]) -> str:
    rows = [("figure", "value", "target", "result")]
    rows += [(f.name, _fmt(f.value, f.unit), f.target, f.verdict) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join([*lines, "", "notes:", *notes] if notes else lines)


@dataclass(slots=True)
class Trial:
    """One full run of the scenario: fresh sandbox, fresh database, seed loop, timed poll."""

    seed: SeedLoop
    run: PollRun
    first_poll: PollSummary
    seed_requests: dict[str, int]
    poll_requests: dict[str, int]
    stored_before: dict[str, int]
    stored_after: dict[str, int]
    expected_after: dict[str, int]
    check: dict[str, Any]

    @property
    def speedup(self) -> float:
        return self.seed.extrapolated_s / self.run.wall_s

    @property
    def db_share(self) -> float:
        return self.run.db.total_s / self.run.wall_s

    @property
    def correct(self) -> bool:
        s = self.run.summary
        return (
            self.stored_after == self.expected_after
            and s.outcome == "ok"
            and s.jobs_changed == sum(self.expected_after.get(k, 0) for k in _FINAL)
            and s.jobs_new == 0
            and self.poll_requests.get("total") == self.run.requests
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed_loop": {
                "timed_jobs": self.seed.timed,
                "tracked_jobs": self.seed.tracked,
                "timed_s": self.seed.seconds,
                "extrapolated_s": self.seed.extrapolated_s,
                "per_request_ms": self.seed.per_request_ms,
                "statuses": self.seed.statuses,
                "requests_seen_by_sandbox": self.seed_requests,
            },
            "poll": {
                "wall_s": self.run.wall_s,
                "requests": self.run.requests,
                "requests_seen_by_sandbox": self.poll_requests,
                "summary": self.run.summary.as_dict(),
                "db_time": {**asdict(self.run.db), "total_s": self.run.db.total_s},
                "db_share": self.db_share,
                "stored_statuses_before": self.stored_before,
                "stored_statuses_after": self.stored_after,
            },
            "speedup": self.speedup,
            "first_poll": self.first_poll.as_dict(),
            "correct": self.correct,
        }


def build_figures(trials: list[Trial], sc: Scenario, concurrency: int, rps: float) -> list[Figure]:
    """Figures of the median trial (by speed-up); every trial's values go into the notes."""
    ranked = sorted(trials, key=lambda t: t.speedup)
    mid = ranked[len(ranked) // 2]
    seed, run = mid.seed, mid.run
    shares = sorted(t.db_share for t in trials)
    db_share = statistics.median(shares)
    upper_share = statistics.median(t.run.db.inside_transactions_s / t.run.wall_s for t in trials)
    req_limit = REQUESTS_TARGET * sc.jobs
    of_n = f"median of {len(trials)} runs; " if len(trials) > 1 else ""

    def runs(values: list[float], fmt: str) -> str:
        return "runs: " + ", ".join(format(v, fmt) for v in values) if len(values) > 1 else ""

    seed_note = (
        f"{seed.timed:,} sequential GETs timed ({seed.seconds:.2f} s, "
        f"{seed.per_request_ms:.2f} ms each), extrapolated linearly to {seed.tracked:,} jobs"
        if seed.timed < seed.tracked
        else f"{seed.timed:,} sequential GETs + parse_response, {seed.per_request_ms:.2f} ms each"
    )
    at_limit_poll = run.requests / DEFAULT_MAX_RPS
    at_limit_seed = seed.tracked / DEFAULT_MAX_RPS
    return [
        Figure(
            "seed-style loop",
            seed.extrapolated_s,
            "s",
            note=f"{seed_note}; {runs([t.seed.extrapolated_s for t in trials], '.2f')}",
        ),
        Figure(
            "poll run (wall)",
            run.wall_s,
            "s",
            note=f"concurrency {concurrency}, client limit {rps:g} req/s "
            f"(floor {run.requests / rps:.3f} s); {runs([t.run.wall_s for t in trials], '.3f')}; "
            f"summary: {run.summary.line()}",
        ),
        Figure(
            "speed-up vs seed loop",
            mid.speedup,
            "x",
            f">= {SPEEDUP_TARGET:g}x",
            mid.speedup >= SPEEDUP_TARGET,
            note=of_n + runs([t.speedup for t in ranked], ".2f"),
        ),
        Figure(
            "requests made",
            run.requests,
            "",
            f"<= {req_limit:,.0f} ({REQUESTS_TARGET:g}x {sc.jobs:,})",
            max(t.run.requests for t in trials) <= req_limit,
            note=f"{run.requests / sc.jobs:.3f}x the tracked jobs "
            f"({mid.poll_requests.get('list', 0)} list pages, "
            f"{mid.poll_requests.get('detail', 0)} job GETs); seed loop: {sc.jobs:,}",
        ),
        Figure(
            "database time share",
            db_share * 100,
            "%",
            f"< {DB_SHARE_TARGET * 100:g} %",
            db_share < DB_SHARE_TARGET,
            note=f"{of_n}{run.db.total_s:.3f} s of {run.wall_s:.3f} s = {run.db.statements:,} "
            f"statements {run.db.execute_s:.3f} s + commits of {run.db.transactions} "
            f"transactions {run.db.commit_s:.3f} s (cursor-execute events + commit); "
            + runs([v * 100 for v in shares], ".1f"),
        ),
        Figure(
            "time inside transactions",
            upper_share * 100,
            "%",
            note=f"{of_n}{run.db.inside_transactions_s:.3f} s inside Tracker.read()/write() "
            "(SQL, row fetching and the store's Python work): an upper bound on database time",
        ),
        Figure(
            "poll at 10 req/s (computed)",
            at_limit_poll,
            "s",
            note=f"{run.requests:,} requests / {DEFAULT_MAX_RPS:g} req/s: the least a run takes "
            "at the API's documented limit",
        ),
        Figure(
            "seed loop at 10 req/s (computed)",
            at_limit_seed,
            "s",
            note=f"{seed.tracked:,} requests / {DEFAULT_MAX_RPS:g} req/s; "
            f"{at_limit_seed / max(at_limit_poll, 1e-9):.1f}x the poll's",
        ),
    ]


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one jobtracker poll run against the seed-style one-GET-per-job loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="tracked unfinished jobs")
    parser.add_argument(
        "--changed-fraction", type=float, default=0.1, help="share of jobs that finish by t1"
    )
    parser.add_argument("--seed", type=int, default=SEED, help="sandbox and scenario seed")
    parser.add_argument(
        "--sample", type=int, help="time the seed-style loop over this many jobs and extrapolate"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="PollOptions.concurrency")
    parser.add_argument(
        "--max-rps",
        type=float,
        default=100_000.0,
        help="the jobtracker client's rate limit; the limiter spaces requests evenly, so at "
        "1000 req/s a 900-request run could not take less than 0.9 s",
    )
    parser.add_argument(
        "--spread", type=float, default=2400.0, help="seconds over which jobs were created"
    )
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between polls")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve the sandbox from this process instead of a child process",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="full runs (fresh sandbox and database each)"
    )
    parser.add_argument(
        "--profile", type=Path, help="cProfile the timed poll (one run); write stats here"
    )
    parser.add_argument("--workdir", type=Path, help="where the database goes")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args(argv)
    if args.jobs < 10:
        parser.error("--jobs must be at least 10")
    if not 0.0 < args.changed_fraction < 1.0:
        parser.error("--changed-fraction must be between 0 and 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.profile is not None:
        args.repeat = 1
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be positive")
    if args.interval < 10 or args.spread < 60:
        parser.error("--interval must be >= 10 s and --spread >= 60 s")
    if args.spread + args.interval >= 3600:
        parser.error("--spread + --interval must stay under an hour (the poller's age backoff)")
    return args


def run_trial(args: argparse.Namespace, sc: Scenario, number: int) -> Trial:
    """Build the scenario from scratch, poll once untimed, then time both contenders at t1."""
    setup_started = time.perf_counter()
    sandbox: SandboxHandle = LocalSandbox(sc) if args.in_process else ChildSandbox(sc)
    try:
        now = [sc.t0]  # the sandbox's clock, mirrored for the tracker

        def clock() -> datetime:
            return datetime.fromtimestamp(now[0], UTC)

        client_args: dict[str, Any] = {
            "api_url": sandbox.base_url,
            "api_key": sandbox.api_key,
            "max_rps": args.max_rps,
        }
        options = PollOptions(concurrency=args.concurrency)
        with workdir(args.workdir, keep=args.keep, prefix="jt-bench-poll-") as wd:
            db_path = wd / f"poll-{number}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            tracker = TimedTracker(sqlite_url(db_path), clock=clock)
            try:
                tracker.upgrade()
                with tracker.client(**client_args) as client:
                    first = tracker.poll(client, options)
                before = stored_statuses(tracker)
                ids = unfinished_ids(tracker)
                if len(ids) != sc.jobs or sum(before.values()) != sc.jobs:
                    raise RuntimeError(f"first poll stored {before}, expected {sc.jobs} unfinished")
                print(
                    f"[{number}] setup {time.perf_counter() - setup_started:.1f} s; "
                    f"first poll (untimed): {first.line()}",
                    flush=True,
                )

                now[0] = sandbox.advance(sc.interval_s)
                sandbox.clear_log()
                sample = spread_sample(ids, args.sample)
                seed = seed_loop(sandbox.base_url, sandbox.api_key, sample, len(ids))
                seed_requests = sandbox.requests_seen()
                if len(sample) == len(ids) and seed.statuses != sandbox.check["status_at_t1"]:
                    raise RuntimeError(f"seed loop saw {seed.statuses}, sandbox says otherwise")

                sandbox.clear_log()
                run = timed_poll(tracker, client_args, options, args.profile)
                poll_requests = sandbox.requests_seen()
                after = stored_statuses(tracker)
            finally:
                tracker.close()
            if not args.keep:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    finally:
        sandbox.close()
    trial = Trial(
        seed=seed,
        run=run,
        first_poll=first,
        seed_requests=seed_requests,
        poll_requests=poll_requests,
        stored_before=before,
        stored_after=after,
        expected_after=sandbox.check["status_at_t1"],
        check=sandbox.check,
    )
    print(
        f"[{number}] seed-style loop {seed.extrapolated_s:.2f} s, poll {run.wall_s:.3f} s "
        f"({run.requests} requests, db {run.db.total_s:.3f} s): {trial.speedup:.2f}x"
        + ("" if trial.correct else "  RESULT CHECK FAILED"),
        flush=True,
    )
    return trial


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sc = Scenario(
        seed=args.seed,
        jobs=args.jobs,
        changed=round(args.jobs * args.changed_fraction),
        t0=float(epoch_for_seed(args.seed)),
        spread_s=args.spread,
        interval_s=args.interval,
    )
    where = "in this process" if args.in_process else "in a child process"
    print(
        f"scenario: {sc.jobs:,} unfinished jobs, {sc.changed:,} finish between two polls "
        f"{args.interval:g} s apart; sandbox {where}; {args.repeat} run(s)",
        flush=True,
    )
    trials = [run_trial(args, sc, n) for n in range(1, args.repeat + 1)]
    figures = build_figures(trials, sc, args.concurrency, args.max_rps)
    mid = sorted(trials, key=lambda t: t.speedup)[len(trials) // 2]
    print()
    print(render(figures))
    print()
    print(f"poll requests seen by the sandbox: {mid.poll_requests}")
    print(f"stored statuses after the poll:    {mid.stored_after} (sandbox: {mid.expected_after})")
    if args.profile is not None:
        print("\nnote: the poll ran under cProfile; its timings are inflated.")
        print(f"profile written to {args.profile}; top functions (main thread, cumulative):")
        print(mid.run.profile)
    correct = all(t.correct for t in trials)
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "scenario": {**asdict(sc), "t1": sc.t1, **mid.check},
        "sandbox": where,
        "poll_options": {"concurrency": args.concurrency, "max_rps": args.max_rps},
        "profiled": args.profile is not None,
        "runs": [t.as_dict() for t in trials],
        "correct": correct,
    }
    path = write_report("poll", data, figures)
    print(f"\nwrote {path}")
    if not correct:
        print("RESULT CHECK FAILED: the poll did not store what the sandbox says", file=sys.stderr)
        return 1
    return 0 if all(f.passed is not False for f in figures) else 2


if __name__ == "__main__":
    sys.exit(main())
