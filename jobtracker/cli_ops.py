"""Operational commands: track, poll, runs, sandbox, demo (cron's side of jobtracker)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import IO, Any, NoReturn, Protocol

import click

from jobtracker.cli_common import (
    EXIT_OK,
    EXIT_PARTIAL,
    Duration,
    F,
    db_option,
    format_option,
    quiet,
    say,
)
from jobtracker.client import DEFAULT_MAX_RPS
from jobtracker.poll_types import PollOptions
from jobtracker.render import Format, render
from jobtracker.settings import API_URL_ENV, data_dir
from jobtracker.tracker import Tracker

RUN_COLUMNS = (
    "id",
    "command",
    "started_at",
    "finished_at",
    "outcome",
    "requests",
    "jobs_seen",
    "jobs_changed",
    "jobs_failed",
    "host",
    "pid",
    "error",
)
#: Poll outcomes that still exit 0: everything due was refreshed, or the rest is deferred
#: to the next run by --max-duration on purpose.
_OK_OUTCOMES = {"ok", "time_limit"}


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event (finish the batch, commit, exit) instead of killing us."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        say(f"received {signal.Signals(signum).name}: finishing the current batch")
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def api_options(func: F) -> F:
    """``--api-url``, ``--max-rps`` and ``--max-duration``: every command that calls the API."""
    func = click.option(
        "--max-duration",
        type=Duration(),
        help="Stop starting new work after this long (e.g. 10m); the rest waits for the next run.",
    )(func)
    func = click.option(
        "--max-rps",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_MAX_RPS,
        show_default=True,
        help="API requests per second at most (the API allows 600 per minute).",
    )(func)
    return click.option(
        "--api-url",
        envvar=API_URL_ENV,
        metavar="URL",
        help=f"Batch API base URL [env {API_URL_ENV}; default https://api.hume.ai].",
    )(func)


class _RunSummary(Protocol):
    outcome: str
    failures: list[str]

    def line(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


def finish_run(summary: _RunSummary, fmt: Format, error: str | None = None) -> NoReturn:
    """Print a poll/download summary (one line, or JSON/CSV), its failures, and exit."""
    if fmt == "table":
        click.echo(summary.line())
    else:
        render([summary.as_dict()], fmt, sys.stdout)
    for failure in summary.failures[:20]:
        say(f"  failed: {failure}")
    if error:
        say(f"error: {error}")
    sys.exit(EXIT_OK if summary.outcome in _OK_OUTCOMES else EXIT_PARTIAL)


@click.command("track")
@click.argument("job_ids", nargs=-1)
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r"),
    help="Read job ids from a file, one per line (`-` for stdin).",
)
@click.option("--note", help="A note stored with the ids (e.g. which tool submitted them).")
@db_option
def track(
    job_ids: tuple[str, ...],
    from_file: IO[str] | None,
    note: str | None,
    db_url: str | None,
) -> None:
    """Register job ids for `jobtracker poll` to follow.

    Use it for jobs the list endpoint does not show (legacy jobs) or that other tools
    submitted. Ids already tracked are ignored.

    \b
    Example:
      jobtracker track 6f1d0c3e-7d4f-4c1e-9b1a-2f7c1f0d9e11
      submit-jobs | jobtracker track --from-file -
    """
    ids = list(job_ids)
    if from_file is not None:
        ids.extend(line.strip() for line in from_file if line.strip() and not line.startswith("#"))
    if not ids:
        raise click.UsageError("give job ids as arguments or with --from-file")
    with Tracker(db_url) as tracker:
        added = tracker.track(ids, note)
    say(f"tracking {added} new job id(s) ({len(ids) - added} already tracked)")


@click.command("poll")
@api_options
@click.option(
    "--no-discover",
    is_flag=True,
    help="Follow only jobs already stored or tracked; do not list new ones.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Job fetches in flight at once.",
)
@click.option(
    "--stale-after",
    type=Duration(),
    default="7d",
    show_default=True,
    help="Count unfinished jobs older than this as stale.",
)
@db_option
@format_option
def poll(
    api_url: str | None,
    no_discover: bool,
    concurrency: int,
    max_rps: float,
    max_duration: timedelta | None,
    stale_after: timedelta,
    db_url: str | None,
    fmt: Format,
) -> None:
    """Bring every job up to date with the batch API (run it from cron).

    Discovers new jobs, refreshes unfinished ones, and records the run (`jobtracker runs
    list`). The API key comes from $HUME_API_KEY only. Exit codes: 0 all good, 1 some jobs
    could not be refreshed (the rest are stored), 2 usage or configuration, 3 API key
    rejected, 75 another poll is running.

    \b
    Example:
      HUME_API_KEY=... jobtracker poll
      */5 * * * * HUME_API_KEY=... jobtracker poll --max-duration 4m
    """
    options = PollOptions(
        discover=not no_discover,
        concurrency=concurrency,
        max_duration=None if max_duration is None else max_duration.total_seconds(),
        stale_after=stale_after,
    )
    with (
        Tracker(db_url) as tracker,
        tracker.client(api_url, max_rps=max_rps, pool_size=concurrency * 2) as client,
        stop_on_signals() as stop,
    ):
        summary = tracker.poll(client, options, stop)
    finish_run(summary, fmt, summary.error)


@click.group("runs")
def runs() -> None:
    """Poll and download runs: is cron healthy, when did it last succeed.

    \b
    Example:
      jobtracker runs list --limit 5
    """


@runs.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="At most this many runs.",
)
@click.option(
    "--command",
    "command",
    type=click.Choice(["poll", "download"]),
    help="Only runs of this command.",
)
@db_option
@format_option
def runs_list(limit: int, command: str | None, db_url: str | None, fmt: Format) -> None:
    """List recent runs, newest first, with their outcome and counts.

    \b
    Example:
      jobtracker runs list --limit 10 --format json
    """
    with Tracker(db_url) as tracker:
        rows = tracker.runs(limit, command)
    render(rows, fmt, sys.stdout, None if fmt == "json" else RUN_COLUMNS)


@click.command("sandbox")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to serve on."
)
@click.option(
    "--port", type=int, default=8765, show_default=True, help="Port (0 picks a free one)."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Simulated jobs to create.",
)
@click.option(
    "--legacy",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Of which in the legacy shape.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for job data and faults."
)
@click.option(
    "--time-scale",
    type=float,
    default=60.0,
    show_default=True,
    help="Simulated seconds per real second.",
)
def sandbox(host: str, port: int, jobs: int, legacy: int, seed: int, time_scale: float) -> None:
    """Serve the simulated batch API on loopback (for trying jobtracker out).

    Prints the URL and the API key to use; stop it with Ctrl-C.

    \b
    Example:
      jobtracker sandbox --port 8765 &
      HUME_API_KEY=sandbox-key jobtracker poll --api-url http://127.0.0.1:8765
    """
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise click.BadParameter("the sandbox serves on loopback only", param_hint="--host")
    from jobtracker.sandbox import serve

    serve(
        host,
        port,
        jobs=jobs,
        legacy=legacy,
        seed=seed,
        api_key="sandbox-key",
        time_scale=time_scale,
    )


@click.command("demo")
@click.option(
    "--jobs",
    type=click.IntRange(1, 2000),
    default=30,
    show_default=True,
    help="Simulated jobs (today's shape).",
)
@click.option(
    "--legacy",
    type=click.IntRange(0, 500),
    default=6,
    show_default=True,
    help="Simulated legacy jobs.",
)
@click.option(
    "--seed",
    type=int,
    help="Seed for the simulated jobs (default: a new one each run, so every run shows new jobs).",
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="Database for the demo (default: demo.db, an SQLite file in your data directory).",
)
def demo(jobs: int, legacy: int, seed: int | None, db_url: str | None) -> None:
    """Run the whole job against the built-in sandbox: poll, download, report.

    Needs no setup: it starts the simulated API on 127.0.0.1, creates the embedded SQLite
    database demo.db in your data directory (or uses --db), polls until every job has
    finished, downloads the results and prints the run-time report. It never uses
    $JOBTRACKER_DB or your jobtracker.db: simulated jobs must not mix with real ones (a poll
    against the sandbox would mark real jobs as not found).

    \b
    Example:
      jobtracker demo
      jobtracker demo --db sqlite:///demo.db --jobs 100
    """
    from jobtracker.demo import run_demo

    with Tracker(db_url or f"sqlite:///{data_dir() / 'demo.db'}") as tracker:
        say(f"database: {tracker.display_url}")
        result = run_demo(tracker, jobs=jobs, legacy=legacy, seed=seed, echo=click.echo)
        stats = tracker.run_time_stats(by="model")
    click.echo(
        f"\n{result.finished}/{result.jobs} jobs finished after {result.rounds} poll(s). "
        "Run times by model (seconds):"
    )
    render((s.as_dict() for s in stats), "table", sys.stdout)
    if result.finished < result.jobs:
        sys.exit(EXIT_PARTIAL)


@click.command("download")
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    help="Directory for result files (remembered per database; default: results/ beside "
    "the database).",
)
@click.option(
    "--kind",
    type=click.Choice(["predictions", "artifacts", "errors"]),
    help="Only this kind of file.",
)
@click.option("--job", "job_id", metavar="ID", help="Only this job's files.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Files in flight at once.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Also try files marked failed after their attempts."
)
@api_options
@db_option
@format_option
def download(
    dest: str | None,
    kind: str | None,
    job_id: str | None,
    concurrency: int,
    retry_failed: bool,
    max_duration: timedelta | None,
    api_url: str | None,
    max_rps: float,
    db_url: str | None,
    fmt: Format,
) -> None:
    """Fetch every outstanding result file and record what was fetched (run it from cron).

    Files go to DEST/j-<job id, encoded>/<kind>.<ext>; each is streamed, checked against its
    Content-Length, hashed (sha256) and renamed into place only when complete. Expiring
    signed URLs are fetched first; expired ones are refreshed through the API. Exit code 1
    when any file failed (the rest are done).

    \b
    Example:
      HUME_API_KEY=... jobtracker download --dest /data/hume-results
      jobtracker download --kind predictions --concurrency 8
    """
    progress = (
        _progress_printer() if fmt == "table" and sys.stderr.isatty() and not quiet() else None
    )
    with (
        Tracker(db_url) as tracker,
        tracker.client(api_url, max_rps=max_rps, pool_size=concurrency * 2) as client,
        stop_on_signals() as stop,
    ):
        summary = tracker.download(
            client,
            dest=dest,
            kind=kind,
            job_id=job_id,
            concurrency=concurrency,
            retry_failed=retry_failed,
            max_duration=None if max_duration is None else max_duration.total_seconds(),
            stop=stop,
            on_progress=progress,
        )
    if progress is not None:
        click.echo("", err=True)
    finish_run(summary, fmt)


def _progress_printer() -> Callable[[int, int, int], None]:
    """A one-line progress display on a terminal: files and bytes."""

    def show(done: int, total: int, size: int) -> None:
        width = 30
        filled = width if not total else min(width, width * done // total)
        bar = "#" * filled + "-" * (width - filled)
        click.echo(f"\r[{bar}] {done}/{total} files, {size / 1e6:.1f} MB", nl=False, err=True)

    return show


@click.command("verify")
@db_option
@format_option
def downloads_verify(db_url: str | None, fmt: Format) -> None:
    """Re-hash downloaded files; missing or changed files go back to pending.

    \b
    Example:
      jobtracker downloads verify && jobtracker download
    """
    with Tracker(db_url) as tracker:
        result = tracker.verify_downloads()
    if fmt == "table":
        click.echo(
            f"verified {result.checked} files: {result.ok} ok, {result.missing} missing, "
            f"{result.changed} changed (missing and changed ones are pending again)"
        )
    else:
        render([result.as_dict()], fmt, sys.stdout)
    if result.missing or result.changed:
        sys.exit(EXIT_PARTIAL)


__all__ = ["demo", "download", "downloads_verify", "poll", "runs", "sandbox", "track"]
