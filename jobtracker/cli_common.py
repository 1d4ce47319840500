"""Pieces every command shares: the error handler, option types, shared options, output.

Errors become a message on stderr and an exit code here, in one place (:class:`JobTrackerGroup`):
0 success, 1 some records/jobs/files failed (the rest were stored), 2 usage or configuration
(including a database that needs ``jobtracker db upgrade``), 3 API key rejected, 75 another
process holds the lock, 130 interrupted.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from jobtracker.errors import JobTrackerError
from jobtracker.render import FORMATS
from jobtracker.settings import DB_ENV

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes decided here; usage (2), auth (3) and lock (75) come from the exception classes'
# exit_code (and click's own usage errors).
EXIT_OK, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 130

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


class JobTrackerGroup(click.Group):
    """Maps every jobtracker error to its message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobTrackerError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except SQLAlchemyError as exc:
            # Driver messages can be long; the first line says what failed.
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0:1]
            click.echo(
                f"error: database error: {first[0] if first else type(exc).__name__}", err=True
            )
            ctx.exit(EXIT_PARTIAL)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


class Duration(click.ParamType):  # type: ignore[type-arg] # generic only in newer click
    """``90s``, ``15m``, ``24h``, ``7d`` (or plain seconds)."""

    name = "duration"
    _units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 24h or 7d", param, ctx)
        return timedelta(seconds=float(match[1]) * self._units[match[2] or "s"])


class When(click.ParamType):  # type: ignore[type-arg] # generic only in newer click
    """An ISO date or time (UTC unless it says otherwise), or an age like ``7d`` (that long ago)."""

    name = "when"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if re.fullmatch(r"\d+(?:\.\d+)?[smhdw]", text):
            return datetime.now(UTC) - Duration().convert(text, param, ctx)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{value!r} is not a date (2024-05-01), a time (2024-05-01T12:00Z) or an age (7d)",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # -v/-q given after the command name act as if given before it.
    if not value:
        return value
    root = ctx.find_root()
    root.ensure_object(dict)
    if param.name == "quiet":
        root.obj["quiet"] = True
        configure_logging(0, True)
    else:
        configure_logging(int(value), bool(root.obj.get("quiet")))
    return value


def db_option(func: F) -> F:
    """``--db URL`` (or ``$JOBTRACKER_DB``), declared once for every command.

    It also brings ``-v``/``-q``, so ``jobtracker poll -v`` works like ``jobtracker -v poll``.
    """
    func = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_verbosity,
        help="Print only errors and requested output.",
    )(func)
    func = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_verbosity,
        help="Log more: every API request (redacted); -vv for debug.",
    )(func)
    return click.option(
        "--db",
        "db_url",
        envvar=DB_ENV,
        metavar="URL",
        help=f"Database URL (sqlite:///path or postgresql+psycopg://...) [env {DB_ENV}; "
        "default: an SQLite file in your data directory].",
    )(func)


def format_option(func: F) -> F:
    """``--format table|json|csv``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def configure_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: warnings by default, requests with -v, debug with -vv."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # basicConfig does nothing the second time; the level must still follow the last flags.
    logging.getLogger().setLevel(level)


def quiet() -> bool:
    """Whether ``-q`` was given."""
    return bool(click.get_current_context().find_root().obj.get("quiet"))


def say(message: str) -> None:
    """A status line on stderr (so stdout stays clean for JSON/CSV), unless --quiet."""
    if not quiet():
        click.echo(message, err=True)
