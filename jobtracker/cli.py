"""The ``jobtracker`` command line: options, one ``Tracker`` call per command, rendering.

Shared pieces (error handler and exit codes, option types) live in :mod:`jobtracker.cli_common`;
the operational commands (track, poll, runs, sandbox, demo) in :mod:`jobtracker.cli_ops`.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

import click

from jobtracker import cli_ops
from jobtracker._version import __version__
from jobtracker.cli_common import (
    EXIT_PARTIAL,
    Duration,
    JobTrackerGroup,
    When,
    configure_logging,
    db_option,
    format_option,
    say,
)
from jobtracker.errors import ParseError
from jobtracker.render import Format, render, render_one
from jobtracker.tracker import Tracker

JOB_COLUMNS = (
    "job_id",
    "status",
    "models",
    "created_at",
    "ended_at",
    "run_time_s",
    "error_message",
)
DOWNLOAD_COLUMNS = ("job_id", "kind", "state", "attempts", "url_expires_at", "last_error")


@click.group(cls=JobTrackerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobtracker")
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and requested output.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Keep every asynchronous batch job on record.

    \b
    Example:
      jobtracker db upgrade
      jobtracker import responses.jsonl
      jobtracker report run-times --by model
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    configure_logging(verbose, quiet)


# --- db ------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Create and migrate the database schema.

    \b
    Example:
      jobtracker db upgrade
      jobtracker db current --db postgresql+psycopg://me@dbhost/jobs
    """


@db.command("upgrade")
@click.argument("revision", default="head")
@db_option
def db_upgrade(revision: str, db_url: str | None) -> None:
    """Migrate the database up to REVISION (default: the newest), creating it if needed.

    \b
    Example:
      jobtracker db upgrade
    """
    with Tracker(db_url) as tracker:
        tracker.upgrade(revision)
        say(f"database {tracker.display_url} is at revision {tracker.current_revision()}")


@db.command("current")
@db_option
def db_current(db_url: str | None) -> None:
    """Print the database's schema revision and the one this jobtracker needs.

    \b
    Example:
      jobtracker db current
    """
    with Tracker(db_url) as tracker:
        current = tracker.current_revision()
        head = tracker.head_revision()
        state = "up to date" if current == head else "run `jobtracker db upgrade`"
        click.echo(f"{tracker.display_url}: {current or '(empty)'} (head {head}; {state})")


@db.command("downgrade")
@click.argument("revision")
@db_option
def db_downgrade(revision: str, db_url: str | None) -> None:
    """Migrate the database down to REVISION (``base`` drops every jobtracker table).

    \b
    Example:
      jobtracker db downgrade 0001_initial
    """
    with Tracker(db_url) as tracker:
        tracker.downgrade(revision)
        say(f"database {tracker.display_url} is at revision {tracker.current_revision() or 'base'}")


# --- import --------------------------------------------------------------------------------


@main.command("import")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--job-id", help="Job id for payloads that carry none (the legacy shape).")
@db_option
@format_option
def import_(paths: tuple[str, ...], job_id: str | None, db_url: str | None, fmt: Format) -> None:
    """Import job responses from files: a JSON object, a JSON array, or JSON Lines.

    PATH may be ``-`` for stdin. A record that cannot be parsed is reported with its file and
    line and skipped; the rest are stored. Importing the same data again changes nothing.
    Exit code 1 when any record was skipped.

    \b
    Example:
      jobtracker import responses.jsonl
      jobtracker import --job-id 6f1d0c3e legacy-response.json
      curl -s ... | jobtracker import -
    """

    def report(exc: ParseError) -> None:
        click.echo(f"skipped {exc}", err=True)

    with Tracker(db_url) as tracker:
        stats = tracker.import_files(paths, job_id=job_id, on_error=report)
    if fmt == "table":
        d = stats.as_dict()
        say(
            f"imported {d['received']} record(s): {d['inserted']} new, {d['updated']} updated, "
            f"{d['unchanged']} unchanged, {d['stale']} stale (ignored), {d['failed']} failed"
        )
    else:
        render([stats.as_dict()], fmt, sys.stdout)
    if stats.failed:
        sys.exit(EXIT_PARTIAL)


# --- jobs ----------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """List and show stored jobs.

    \b
    Example:
      jobtracker jobs list --status FAILED --since 7d
      jobtracker jobs show 6f1d0c3e-...
    """


@jobs.command("list")
@click.option(
    "--status",
    multiple=True,
    type=click.Choice(["QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED"], case_sensitive=False),
    help="Only jobs with this status (repeatable).",
)
@click.option("--model", help="Only jobs that ran this model (e.g. face, prosody).")
@click.option(
    "--since", type=When(), help="Created at or after (2024-05-01, 2024-05-01T12:00Z, or 7d ago)."
)
@click.option("--until", type=When(), help="Created before.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many jobs.",
)
@click.option("--all", "all_", is_flag=True, help="No limit.")
@db_option
@format_option
def jobs_list(
    status: tuple[str, ...],
    model: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    all_: bool,
    db_url: str | None,
    fmt: Format,
) -> None:
    """List jobs, newest first.

    \b
    Example:
      jobtracker jobs list --status FAILED --model face --since 2024-05-01
      jobtracker jobs list --format json --all > jobs.json
    """
    with Tracker(db_url) as tracker:
        rows = tracker.jobs(
            status=list(status) or None,
            model=model,
            since=since,
            until=until,
            limit=None if all_ else limit,
        )
    render((r.as_dict() for r in rows), fmt, sys.stdout, None if fmt == "json" else JOB_COLUMNS)


@jobs.command("show")
@click.argument("job_id")
@db_option
@format_option
def jobs_show(job_id: str, db_url: str | None, fmt: Format) -> None:
    """Show everything stored about one job: configs, inputs, history, downloads.

    \b
    Example:
      jobtracker jobs show 6f1d0c3e-7d4f-4c1e-9b1a-2f7c1f0d9e11 --format json
    """
    with Tracker(db_url) as tracker:
        detail = tracker.job(job_id)
    render_one(detail.as_dict(), fmt, sys.stdout)


# --- downloads -----------------------------------------------------------------------------


@main.group()
def downloads() -> None:
    """Result files: list what is outstanding, verify what is on disk.

    \b
    Example:
      jobtracker downloads list --expiring-within 24h
    """


@downloads.command("list")
@click.option(
    "--kind",
    type=click.Choice(["predictions", "artifacts", "errors"]),
    help="Only this kind of file.",
)
@click.option(
    "--expiring-within",
    type=Duration(),
    help="Only signed URLs that expire within this time (e.g. 24h), soonest first.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many rows.",
)
@click.option("--all", "all_", is_flag=True, help="No limit.")
@db_option
@format_option
def downloads_list(
    kind: str | None,
    expiring_within: timedelta | None,
    limit: int,
    all_: bool,
    db_url: str | None,
    fmt: Format,
) -> None:
    """List result files not downloaded yet (pending or failed), oldest first.

    \b
    Example:
      jobtracker downloads list
      jobtracker downloads list --kind predictions --expiring-within 24h --format csv
    """
    with Tracker(db_url) as tracker:
        rows = tracker.outstanding_downloads(
            kind, expiring_within=expiring_within, limit=None if all_ else limit
        )
    render(
        (r.as_dict() for r in rows), fmt, sys.stdout, None if fmt == "json" else DOWNLOAD_COLUMNS
    )


# --- report --------------------------------------------------------------------------------


@main.group()
def report() -> None:
    """Reports over the stored jobs.

    \b
    Example:
      jobtracker report run-times --by day --since 30d
    """


@report.command("run-times")
@click.option(
    "--by",
    type=click.Choice(["model", "status", "day"]),
    default="model",
    show_default=True,
    help="Group by model, status or UTC day of creation.",
)
@click.option("--since", type=When(), help="Only jobs created at or after this time.")
@db_option
@format_option
def report_run_times(by: str, since: datetime | None, db_url: str | None, fmt: Format) -> None:
    """Run-time statistics (seconds): count, mean, p50, p95, max per group.

    Counts jobs that have ended. Percentiles are nearest-rank.

    \b
    Example:
      jobtracker report run-times --by model
      jobtracker report run-times --by day --since 2024-05-01 --format csv
    """
    with Tracker(db_url) as tracker:
        rows = tracker.run_time_stats(by=by, since=since)  # type: ignore[arg-type]
    render((r.as_dict() for r in rows), fmt, sys.stdout)


# The operational commands live in their own module; registered here so `main` lists them.
for _command in (
    cli_ops.track,
    cli_ops.poll,
    cli_ops.download,
    cli_ops.runs,
    cli_ops.sandbox,
    cli_ops.demo,
):
    main.add_command(_command)
downloads.add_command(cli_ops.downloads_verify)
