"""Start a throwaway PostgreSQL server for the test suite.

The server lives in a fresh temporary directory, listens only on 127.0.0.1 on a
free port, trusts every local connection and trades durability for speed
(``fsync=off`` and friends).  It is meant for tests only.

``initdb`` and ``postgres`` refuse to run as root, so when the test suite runs
as root (containers, CI) the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

__all__ = ["PostgresServer", "find_pg_bindir"]

#: Environment variable that names the directory holding ``initdb`` and ``pg_ctl``.
PG_BIN_ENV = "JOBTRACKER_PG_BIN"

_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_INITDB_TIMEOUT = 120.0
_START_TIMEOUT = 60  # seconds, passed to ``pg_ctl -t``
_STOP_TIMEOUT = 30  # seconds, passed to ``pg_ctl -t``
_SLACK = 30.0  # extra seconds the subprocess gets beyond pg_ctl's own timeout
_CONNECT_TIMEOUT = 10  # seconds, libpq connect_timeout
_START_ATTEMPTS = 3  # a freshly picked port can be taken before the server binds it
_LOG_TAIL_LINES = 40


def _is_pg_bindir(path: Path) -> bool:
    """Return whether *path* holds the PostgreSQL server binaries we need."""
    return all(os.access(path / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>`` directories (``9.6`` < ``15``)."""
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def _bindir_from_pg_config() -> Path | None:
    """Ask ``pg_config --bindir``; ``None`` if unavailable or it lacks the server."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    # On Debian pg_config may come from libpq-dev alone, whose bindir has no server.
    bindir = Path(result.stdout.strip())
    return bindir if _is_pg_bindir(bindir) else None


def find_pg_bindir() -> Path | None:
    """Locate the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Search order: ``$JOBTRACKER_PG_BIN`` (authoritative when set), ``pg_config
    --bindir``, the highest version in ``/usr/lib/postgresql/*/bin``, then
    ``initdb`` on ``PATH``.  Returns ``None`` when nothing usable is found.
    """
    explicit = os.environ.get(PG_BIN_ENV)
    if explicit:
        path = Path(explicit)
        return path if _is_pg_bindir(path) else None

    from_pg_config = _bindir_from_pg_config()
    if from_pg_config is not None:
        return from_pg_config

    if _DEBIAN_PG_ROOT.is_dir():
        versions = sorted(
            (p for p in _DEBIAN_PG_ROOT.iterdir() if _is_pg_bindir(p / "bin")),
            key=_version_key,
            reverse=True,
        )
        if versions:
            return versions[0] / "bin"

    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if _is_pg_bindir(bindir):
            return bindir
    return None


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    """Quote *value* as a postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class _RunAs:
    """The OS identity the server processes run as (``None`` fields: unchanged)."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_current_process(cls) -> _RunAs:
        """Run as ``postgres`` when we are root, else as ourselves."""
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError(
                "running as root, but PostgreSQL refuses to run as root and there is "
                "no 'postgres' system user to run it as; create one (useradd --system "
                "postgres) or run the tests as an unprivileged user"
            ) from exc
        return cls(uid=entry.pw_uid, gid=entry.pw_gid)

    @property
    def switches_user(self) -> bool:
        """Whether subprocesses change to another user."""
        return self.uid is not None


class PostgresServer:
    """A throwaway PostgreSQL server in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with PostgresServer() as server:
            url = server.create_database("test_x")
    """

    def __init__(self, bindir: Path | None = None, *, user: str = "postgres") -> None:
        """Prepare (but do not start) a server.

        *bindir* is the directory holding ``initdb``/``pg_ctl``/``postgres``
        (default: :func:`find_pg_bindir`); *user* is the database superuser.
        """
        self._bindir = bindir
        self.user = user
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._run_as = _RunAs()

    # -- properties -----------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the running server listens on."""
        if self._port is None:
            raise RuntimeError("PostgreSQL server is not running")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of database *dbname* on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def _datadir(self) -> Path:
        assert self._tmpdir is not None
        return self._tmpdir / "data"

    @property
    def _logfile(self) -> Path:
        assert self._tmpdir is not None
        return self._tmpdir / "server.log"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Create a cluster in a temp dir and start the server; idempotent.

        Raises :class:`RuntimeError` (with the end of the server log) on failure.
        """
        if self._port is not None:
            return
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        if self._bindir is None:
            raise RuntimeError(
                f"PostgreSQL server binaries not found; install PostgreSQL or set ${PG_BIN_ENV}"
            )
        self._run_as = _RunAs.for_current_process()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="jobtracker-pg-"))
        try:
            if self._run_as.uid is not None and self._run_as.gid is not None:
                os.chown(self._tmpdir, self._run_as.uid, self._run_as.gid)
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its temp dir; idempotent."""
        tmpdir = self._tmpdir
        if tmpdir is None:
            return
        try:
            if (self._datadir / "postmaster.pid").exists():
                self._shutdown()
        finally:
            self._port = None
            self._tmpdir = None
            shutil.rmtree(tmpdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database *name* and return its SQLAlchemy URL."""
        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_check_name(name))))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database *name* (if it exists), disconnecting any open sessions."""
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(_check_name(name))
            )
        )

    def _execute(self, statement: sql.Composed) -> None:
        """Run *statement* in autocommit mode against the ``postgres`` database."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=_CONNECT_TIMEOUT,
        ) as conn:
            conn.execute(statement)

    # -- internals ------------------------------------------------------------

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary (as ``postgres`` when we are root), bounded in time."""
        assert self._bindir is not None
        assert self._tmpdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._run_as.switches_user:
            env["HOME"] = str(self._tmpdir)
        return subprocess.run(
            [str(self._bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self._tmpdir,
            env=env,
            user=self._run_as.uid,
            group=self._run_as.gid,
            extra_groups=[] if self._run_as.switches_user else None,
        )

    def _initdb(self) -> None:
        """Create the cluster and append our settings to its postgresql.conf."""
        assert self._tmpdir is not None
        result = self._run(
            [
                "initdb",
                "-D",
                str(self._datadir),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=_INITDB_TIMEOUT,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        settings = {
            "listen_addresses": _conf_quote("127.0.0.1"),
            "unix_socket_directories": _conf_quote(str(self._tmpdir)),
            "max_connections": "100",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        # Appending as root keeps the file's owner (postgres) unchanged.
        with (self._datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# added by jobtracker tests/pg_server.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        """``pg_ctl start`` on a free port, retrying if the port got taken meanwhile."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            try:
                result = self._run(
                    [
                        "pg_ctl",
                        "-D",
                        str(self._datadir),
                        "-l",
                        str(self._logfile),
                        "-o",
                        f"-p {port}",
                        "-w",
                        "-t",
                        str(_START_TIMEOUT),
                        "start",
                    ],
                    timeout=_START_TIMEOUT + _SLACK,
                )
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(
                    f"pg_ctl start did not return within {_START_TIMEOUT + _SLACK:.0f}s; "
                    f"server log:\n{self._log_tail()}"
                ) from exc
            if result.returncode == 0:
                self._port = port
                return
            log = self._log_tail()
            if attempt < _START_ATTEMPTS and "could not bind" in log:
                if (self._datadir / "postmaster.pid").exists():
                    self._shutdown()
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- last lines of {self._logfile} ---\n{log}"
            )

    def _shutdown(self) -> None:
        """Stop the server: fast, then immediate, then SIGKILL to the postmaster."""
        for mode, wait in (("fast", _STOP_TIMEOUT), ("immediate", 15)):
            try:
                result = self._run(
                    ["pg_ctl", "-D", str(self._datadir), "-m", mode, "-w", "-t", str(wait), "stop"],
                    timeout=wait + _SLACK,
                )
            except subprocess.TimeoutExpired:
                continue
            if result.returncode == 0:
                return
        self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        """Last resort: SIGKILL the postmaster named in ``postmaster.pid``."""
        try:
            pid = int((self._datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)

    def _log_tail(self) -> str:
        """Return the last lines of the server log (or a note that there is none)."""
        try:
            lines = self._logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _check_name(name: str) -> str:
    """Reject database names that are not plain lowercase identifiers."""
    if not _DB_NAME_RE.match(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, max 63 chars")
    return name
