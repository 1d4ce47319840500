"""The ``jobtracker`` command line, through click's ``CliRunner`` on a temporary SQLite file."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click
import pytest
from click.testing import CliRunner, Result

from jobtracker.cli import main

REPO = Path(__file__).resolve().parents[1]
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REQUIRED_JOB_KEYS = {
    "job_id",
    "status",
    "models",
    "urls",
    "created_at",
    "started_at",
    "ended_at",
    "run_time_s",
    "error_message",
    "num_predictions",
    "num_errors",
}
SIX_MODELS = ["burst", "face", "facemesh", "language", "ner", "prosody"]


def invoke(runner: CliRunner, *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = runner.invoke(main, list(args), input=stdin)
    assert result.exit_code == code, (
        f"exit {result.exit_code} != {code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
        f"exception: {result.exception!r}"
    )
    assert "Traceback" not in result.stderr
    return result


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def job_payload(job_id: str, status: str, created: datetime, run_s: float = 2.0) -> dict[str, Any]:
    state: dict[str, Any] = {"status": status, "created_timestamp_ms": ms(created)}
    if status in ("COMPLETED", "FAILED"):
        state["started_timestamp_ms"] = ms(created)
        state["ended_timestamp_ms"] = ms(created + timedelta(seconds=run_s))
    return {
        "job_id": job_id,
        "request": {"models": {"prosody": {}}, "urls": [f"https://in.example.com/{job_id}"]},
        "state": state,
    }


def legacy_queued() -> dict[str, Any]:
    return {"status": "QUEUED", "creation_timestamp": 1_700_000_000, "request": {"urls": []}}


def json_rows(result: Result) -> list[dict[str, Any]]:
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """URL of a not-yet-created SQLite file."""
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def upgraded(runner: CliRunner, db: str) -> str:
    invoke(runner, "db", "upgrade", "--db", db)
    return db


@pytest.fixture
def samples_db(runner: CliRunner, upgraded: str, core_samples: Path) -> str:
    """The legacy completed sample as ``legacy-1`` plus the current ``api-list`` answer."""
    invoke(
        runner,
        "import",
        "--job-id",
        "legacy-1",
        str(core_samples / "legacy" / "completed.json"),
        "--db",
        upgraded,
    )
    invoke(runner, "import", str(core_samples / "current" / "api-list.json"), "--db", upgraded)
    return upgraded


def legacy_signatures(core_samples: Path) -> list[str]:
    """The credentials inside the legacy sample's signed URLs, raw and percent-decoded."""
    payload = json.loads((core_samples / "legacy" / "completed.json").read_text())
    found = []
    for key in ("predictions_url", "artifacts_url", "errors_url"):
        query = urlsplit(payload["completed"][key]).query
        raw = re.search(r"Signature=([^&]+)", query)
        assert raw is not None
        found += [raw.group(1), parse_qs(query)["Signature"][0], unquote(raw.group(1))[:24]]
    return found


# --- db ------------------------------------------------------------------------------------


def test_db_upgrade_and_current(runner: CliRunner, db: str, tmp_path: Path) -> None:
    before = invoke(runner, "db", "current", "--db", db)
    assert "(empty)" in before.stdout
    assert "run `jobtracker db upgrade`" in before.stdout
    assert not (tmp_path / "cli.db").exists()

    up = invoke(runner, "db", "upgrade", "--db", db)
    assert (tmp_path / "cli.db").is_file()
    assert "is at revision" in up.stderr

    after = invoke(runner, "db", "current", "--db", db)
    head = re.search(r"\(head (\S+);", after.stdout)
    assert head is not None
    assert f": {head.group(1)} (head {head.group(1)}; up to date)" in after.stdout


def test_quiet_and_verbose_work_after_the_command_name(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    loud = invoke(runner, "db", "upgrade", "--db", db)
    assert "is at revision" in loud.stderr
    quiet = invoke(runner, "db", "upgrade", "--db", db, "-q")
    assert quiet.stderr == ""
    verbose = invoke(runner, "jobs", "list", "--db", db, "-vv")
    assert verbose.exit_code == 0


def test_db_url_from_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    env_db = f"sqlite:///{tmp_path / 'env.db'}"
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    source = tmp_path / "one.json"
    source.write_text(
        json.dumps(job_payload("env-job", "QUEUED", datetime(2024, 1, 1, tzinfo=UTC)))
    )
    env_runner = CliRunner(env={"JOBTRACKER_DB": env_db})

    invoke(env_runner, "db", "upgrade")
    invoke(env_runner, "import", str(source))
    assert (tmp_path / "env.db").is_file()
    listed = json_rows(invoke(env_runner, "jobs", "list", "--format", "json"))
    assert [r["job_id"] for r in listed] == ["env-job"]

    # --db wins over the environment.
    invoke(env_runner, "db", "upgrade", "--db", other_db)
    assert json_rows(invoke(env_runner, "jobs", "list", "--db", other_db, "--format", "json")) == []


# --- import and list -------------------------------------------------------------------------


def test_import_samples_and_list_json(runner: CliRunner, samples_db: str) -> None:
    rows = json_rows(invoke(runner, "jobs", "list", "--db", samples_db, "--format", "json"))
    assert [r["job_id"] for r in rows] == ["job_id", "legacy-1"]  # newest first
    for row in rows:
        assert set(row) >= REQUIRED_JOB_KEYS
        for key in ("created_at", "started_at", "ended_at"):
            assert row[key] is None or ISO_UTC.match(row[key]), (key, row[key])
    current, legacy = rows
    assert current["run_time_s"] == 0.474
    assert current["status"] == "COMPLETED"
    assert current["models"] == SIX_MODELS
    assert current["urls"] == ["https://hume-tutorials.s3.amazonaws.com/faces.zip"]
    assert current["created_at"] == "2024-04-08T14:39:18.717Z"
    assert current["started_at"] == "2024-04-08T14:39:18.800Z"
    assert current["ended_at"] == "2024-04-08T14:39:19.274Z"
    assert (current["num_predictions"], current["num_errors"]) == (10, 0)
    assert legacy["run_time_s"] == 3.0
    assert legacy["models"] == ["face"]
    assert legacy["created_at"] == "2022-08-15T20:20:10.000Z"
    assert legacy["started_at"] is None
    assert legacy["ended_at"] == "2022-08-15T20:20:13.000Z"
    assert legacy["error_message"] is None
    assert (legacy["num_predictions"], legacy["num_errors"]) == (20, 0)


def test_jobs_show(runner: CliRunner, samples_db: str) -> None:
    detail = json.loads(
        invoke(runner, "jobs", "show", "legacy-1", "--db", samples_db, "--format", "json").stdout
    )
    assert detail["job_id"] == "legacy-1"
    assert detail["configs"]["face"]["fps_pred"] == 3.0
    assert [h["to_status"] for h in detail["history"]] == ["COMPLETED"]
    assert sorted(d["kind"] for d in detail["downloads"]) == ["artifacts", "errors", "predictions"]
    assert all(ISO_UTC.match(d["url_expires_at"]) for d in detail["downloads"])
    table = invoke(runner, "jobs", "show", "job_id", "--db", samples_db).stdout
    assert re.search(r"^run_time_s\s+0\.474$", table, re.MULTILINE)
    assert re.search(r"^status\s+COMPLETED$", table, re.MULTILINE)


def test_jobs_show_unknown_job(runner: CliRunner, upgraded: str) -> None:
    result = invoke(runner, "jobs", "show", "no-such-job", "--db", upgraded, code=1)
    assert result.stderr.strip() == "error: no job 'no-such-job' in the database"
    assert result.stdout == ""


def test_downloads_list_and_signed_urls_are_redacted(
    runner: CliRunner, samples_db: str, core_samples: Path
) -> None:
    rows = json_rows(invoke(runner, "downloads", "list", "--db", samples_db, "--format", "json"))
    assert sorted((r["job_id"], r["kind"]) for r in rows) == [
        ("job_id", "artifacts"),
        ("job_id", "predictions"),
        ("legacy-1", "artifacts"),
        ("legacy-1", "errors"),
        ("legacy-1", "predictions"),
    ]
    signed = [r["source_url"] for r in rows if r["job_id"] == "legacy-1"]
    assert len(signed) == 3
    for url in signed:
        assert "Signature=REDACTED" in url
        assert "Expires=1661199613" in url
    assert all(r["state"] == "pending" for r in rows)

    secrets = legacy_signatures(core_samples)
    outputs = []
    for fmt in ("table", "json", "csv"):
        for command in (
            ["downloads", "list"],
            ["downloads", "list", "--expiring-within", "100000d"],
            ["jobs", "show", "legacy-1"],
            ["jobs", "list"],
        ):
            outputs.append(invoke(runner, *command, "--db", samples_db, "--format", fmt))
    for result in outputs:
        for secret in secrets:
            assert secret not in result.stdout
            assert secret not in result.stderr
    shown = [r.stdout for r in outputs[2::4]]  # jobs show, in every format
    assert all("Signature=REDACTED" in text for text in shown)


def test_import_json_lines_with_bad_records(
    runner: CliRunner, upgraded: str, tmp_path: Path
) -> None:
    source = tmp_path / "responses.jsonl"
    created = datetime(2024, 5, 1, tzinfo=UTC)
    lines = [
        json.dumps(job_payload("l-1", "QUEUED", created)),
        "",
        '{"job_id": "broken", "state": {',
        json.dumps(legacy_queued()),
        json.dumps(job_payload("l-2", "COMPLETED", created)),
    ]
    source.write_text("\n".join(lines) + "\n")

    result = invoke(runner, "import", str(source), "--db", upgraded, code=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(errors) == 2
    assert errors[0].startswith(f"skipped {source}:3: invalid JSON")
    assert errors[1].startswith(f"skipped {source}:4: ")
    assert "--job-id" in errors[1]
    assert (
        "imported 4 record(s): 2 new, 0 updated, 0 unchanged, 0 stale (ignored), 2 failed"
        in result.stderr
    )
    listed = json_rows(invoke(runner, "jobs", "list", "--db", upgraded, "--format", "json"))
    assert sorted(r["job_id"] for r in listed) == ["l-1", "l-2"]


def test_import_from_stdin(runner: CliRunner, upgraded: str) -> None:
    payload = job_payload("from-stdin", "COMPLETED", datetime(2024, 5, 1, tzinfo=UTC), run_s=7.5)
    invoke(runner, "import", "-", "--db", upgraded, stdin=json.dumps(payload, indent=2))
    rows = json_rows(invoke(runner, "jobs", "list", "--db", upgraded, "--format", "json"))
    assert [(r["job_id"], r["run_time_s"]) for r in rows] == [("from-stdin", 7.5)]


def test_import_a_json_array_twice(runner: CliRunner, upgraded: str, tmp_path: Path) -> None:
    source = tmp_path / "array.json"
    created = datetime(2024, 5, 1, tzinfo=UTC)
    payloads = [job_payload(f"a-{n}", "COMPLETED", created, run_s=n) for n in (1, 2, 3)]
    source.write_text(json.dumps(payloads, indent=2))

    first = json_rows(invoke(runner, "import", str(source), "--db", upgraded, "--format", "json"))
    assert first == [
        {"received": 3, "inserted": 3, "updated": 0, "unchanged": 0, "stale": 0, "failed": 0}
    ]
    again = json_rows(invoke(runner, "import", str(source), "--db", upgraded, "--format", "json"))
    assert again == [
        {"received": 3, "inserted": 0, "updated": 0, "unchanged": 3, "stale": 0, "failed": 0}
    ]
    rows = json_rows(invoke(runner, "jobs", "list", "--db", upgraded, "--format", "json"))
    assert sorted((r["job_id"], r["run_time_s"]) for r in rows) == [
        ("a-1", 1.0),
        ("a-2", 2.0),
        ("a-3", 3.0),
    ]


def test_import_a_missing_file_is_reported(
    runner: CliRunner, upgraded: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    result = invoke(runner, "import", str(missing), "--db", upgraded, code=1)
    assert f"skipped {missing}: cannot open" in result.stderr


# --- a database that is not ready -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "list"],
        ["jobs", "show", "x"],
        ["downloads", "list"],
        ["report", "run-times"],
        ["import", "{source}"],
    ],
    ids=["jobs-list", "jobs-show", "downloads-list", "report", "import"],
)
def test_commands_on_a_database_that_needs_upgrade_exit_2(
    runner: CliRunner, db: str, tmp_path: Path, command: list[str]
) -> None:
    source = tmp_path / "one.json"
    source.write_text(json.dumps(job_payload("x", "QUEUED", datetime(2024, 1, 1, tzinfo=UTC))))
    args = [part.format(source=source) for part in command]
    result = invoke(runner, *args, "--db", db, code=2)
    assert "jobtracker db upgrade" in result.stderr
    assert result.stderr.startswith("error: ")
    assert result.stdout == ""
    assert not (tmp_path / "cli.db").exists()


# --- output formats ----------------------------------------------------------------------


def test_csv_output_parses(runner: CliRunner, samples_db: str) -> None:
    def read(*args: str) -> list[dict[str, str]]:
        out = invoke(runner, *args, "--db", samples_db, "--format", "csv").stdout
        return list(csv.DictReader(io.StringIO(out)))

    jobs = read("jobs", "list")
    assert [r["job_id"] for r in jobs] == ["job_id", "legacy-1"]
    assert list(jobs[0]) == [
        "job_id",
        "status",
        "models",
        "created_at",
        "ended_at",
        "run_time_s",
        "error_message",
    ]
    assert jobs[0]["models"] == ",".join(SIX_MODELS)
    assert float(jobs[0]["run_time_s"]) == 0.474
    assert float(jobs[1]["run_time_s"]) == 3.0
    assert jobs[1]["created_at"] == "2022-08-15T20:20:10.000Z"
    assert jobs[1]["error_message"] == ""

    files = read("downloads", "list")
    assert len(files) == 5
    assert {r["kind"] for r in files} == {"predictions", "artifacts", "errors"}
    assert "source_url" not in files[0]

    stats = read("report", "run-times", "--by", "status")
    assert [(r["group"], r["jobs"], r["max_s"]) for r in stats] == [("COMPLETED", "2", "3.000")]

    detail = read("jobs", "show", "legacy-1")
    fields = {r["field"]: r["value"] for r in detail}
    assert fields["job_id"] == "legacy-1"
    assert fields["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "model",
            [
                ("burst", 1, 0.474, 0.474, 0.474, 0.474),
                ("face", 2, 1.737, 0.474, 3.0, 3.0),
                ("facemesh", 1, 0.474, 0.474, 0.474, 0.474),
                ("language", 1, 0.474, 0.474, 0.474, 0.474),
                ("ner", 1, 0.474, 0.474, 0.474, 0.474),
                ("prosody", 1, 0.474, 0.474, 0.474, 0.474),
            ],
        ),
        ("status", [("COMPLETED", 2, 1.737, 0.474, 3.0, 3.0)]),
        (
            "day",
            [("2022-08-15", 1, 3.0, 3.0, 3.0, 3.0), ("2024-04-08", 1, 0.474, 0.474, 0.474, 0.474)],
        ),
    ],
)
def test_report_run_times(
    runner: CliRunner, samples_db: str, by: str, expected: list[tuple[Any, ...]]
) -> None:
    rows = json_rows(
        invoke(runner, "report", "run-times", "--by", by, "--db", samples_db, "--format", "json")
    )
    got = [(r["group"], r["jobs"], r["mean_s"], r["p50_s"], r["p95_s"], r["max_s"]) for r in rows]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for values, wanted in zip(got, expected, strict=True):
        assert values[2:] == pytest.approx(wanted[2:])
    table = invoke(runner, "report", "run-times", "--by", by, "--db", samples_db).stdout
    header = table.splitlines()[0].split()
    assert header == ["group", "jobs", "mean_s", "p50_s", "p95_s", "max_s"]
    assert len(table.splitlines()) == 2 + len(expected)


def test_since_and_until_values(runner: CliRunner, samples_db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    source = tmp_path / "recent.jsonl"
    source.write_text(
        json.dumps(job_payload("yesterday", "COMPLETED", now - timedelta(days=1)))
        + "\n"
        + json.dumps(job_payload("last-month", "COMPLETED", now - timedelta(days=30)))
        + "\n"
    )
    invoke(runner, "import", str(source), "--db", samples_db)

    def ids(*args: str) -> list[str]:
        out = invoke(runner, "jobs", "list", *args, "--db", samples_db, "--format", "json")
        return [r["job_id"] for r in json_rows(out)]

    assert ids() == ["yesterday", "last-month", "job_id", "legacy-1"]
    assert ids("--since", "7d") == ["yesterday"]
    assert ids("--since", "168h") == ["yesterday"]
    assert ids("--since", "60d") == ["yesterday", "last-month"]
    assert ids("--since", "2024-01-01", "--until", "2025-01-01") == ["job_id"]
    assert ids("--since", "2024-04-08T14:39:18.717Z", "--until", "2024-04-09") == ["job_id"]
    assert ids("--since", "2024-04-08T14:39:18.718Z", "--until", "2024-04-09") == []
    assert ids("--until", "2023-01-01") == ["legacy-1"]
    assert ids("--status", "completed", "--model", "face", "--limit", "1") == ["job_id"]
    stats = json_rows(
        invoke(
            runner,
            "report",
            "run-times",
            "--by",
            "status",
            "--since",
            "7d",
            "--db",
            samples_db,
            "--format",
            "json",
        )
    )
    assert [(r["group"], r["jobs"], r["max_s"]) for r in stats] == [("COMPLETED", 1, 2.0)]
    soon = invoke(
        runner,
        "downloads",
        "list",
        "--expiring-within",
        "24h",
        "--db",
        samples_db,
        "--format",
        "json",
    )
    # The sample's signed URLs expired in 2022: "within 24 h" includes them, soonest first.
    assert [(r["job_id"], r["kind"]) for r in json_rows(soon)] == [
        ("legacy-1", "artifacts"),
        ("legacy-1", "errors"),
        ("legacy-1", "predictions"),
    ]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["jobs", "list", "--since", "yesterday"], "--since"),
        (["jobs", "list", "--since", "7x"], "--since"),
        (["jobs", "list", "--until", "2024-13-01"], "--until"),
        (["jobs", "list", "--status", "DONE"], "--status"),
        (["jobs", "list", "--limit", "0"], "--limit"),
        (["jobs", "list", "--format", "xml"], "--format"),
        (["downloads", "list", "--expiring-within", "soon"], "--expiring-within"),
        (["downloads", "list", "--kind", "videos"], "--kind"),
        (["report", "run-times", "--by", "week"], "--by"),
        (["report", "run-times", "--since", "7 days"], "--since"),
    ],
)
def test_bad_option_values_are_usage_errors(
    runner: CliRunner, upgraded: str, args: list[str], option: str
) -> None:
    result = invoke(runner, *args, "--db", upgraded, code=2)
    assert f"Invalid value for '{option}'" in result.stderr
    assert result.stdout == ""


# --- documentation -------------------------------------------------------------------------


def walk_commands(group: click.Group, prefix: str = "jobtracker") -> Iterator[tuple[str, Any]]:
    for name, command in sorted(group.commands.items()):
        full = f"{prefix} {name}"
        yield full, command
        if isinstance(command, click.Group):
            yield from walk_commands(command, full)


COMMANDS = dict(walk_commands(main))
LEAVES = [name for name, command in COMMANDS.items() if not isinstance(command, click.Group)]


def test_the_core_commands_exist() -> None:
    assert {
        "jobtracker db upgrade",
        "jobtracker db current",
        "jobtracker db downgrade",
        "jobtracker import",
        "jobtracker jobs list",
        "jobtracker jobs show",
        "jobtracker downloads list",
        "jobtracker report run-times",
    } <= set(LEAVES)


@pytest.mark.parametrize("name", ["jobtracker", *COMMANDS])
def test_every_command_has_help_with_an_example(runner: CliRunner, name: str) -> None:
    command = main if name == "jobtracker" else COMMANDS[name]
    assert command.help
    assert "Example" in command.help
    result = invoke(runner, *name.split()[1:], "--help")
    assert "Example" in result.stdout
    assert result.stdout.startswith("Usage: ")


def test_readme_mentions_every_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in LEAVES if not re.search(re.escape(name) + r"(?![\w-])", readme)]
    assert missing == []


def test_python_dash_m_jobtracker(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobtracker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    for group in ("db", "import", "jobs", "downloads", "report"):
        assert re.search(rf"^\s+{group}\s", result.stdout, re.MULTILINE), group
    assert result.stderr == ""
